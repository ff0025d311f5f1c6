"""Exec streams: iterators over the NDJSON output of ``POST /sandboxes/{id}/exec``.

The server sends ``{"stream":"stdout"|"stderr","data":...}`` lines as output
arrives and always ends with ``{"stream":"exit","exit_code":N,...}`` (or an
``error`` line if the exec failed after it started). The iterators yield a
:class:`~stacyvm.models.StreamChunk` per line, the exit line included, then
stop. A stream that ends without its exit line raises
:class:`~stacyvm.exceptions.StreamInterrupted`; an ``error`` line raises the
typed error for its code.

Closing a stream before its end closes the connection, and the server kills
the command.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Deque, Dict, Optional

from stacyvm._protocol import NDJSONDecoder, StreamState
from stacyvm.exceptions import StacyVMError, StreamInterrupted
from stacyvm.models import StreamChunk

if TYPE_CHECKING:  # pragma: no cover
    from stacyvm._async_http import AsyncStreamBody
    from stacyvm._sync_http import SyncStreamBody

__all__ = ["StreamChunk", "ExecStream", "AsyncExecStream"]


class _StreamInfo:
    _state: StreamState

    @property
    def exit_code(self) -> Optional[int]:
        """The command's exit code, once the exit line has been read."""
        return self._state.exit_code

    @property
    def duration(self) -> Optional[str]:
        """The command's duration (Go syntax), once the exit line has been read."""
        return self._state.duration

    @property
    def timed_out(self) -> bool:
        """True if the server killed the command at its deadline (exit code 124)."""
        return self._state.timed_out

    @property
    def done(self) -> bool:
        """True once the exit (or error) line has been read."""
        return self._state.done

    @property
    def request_id(self) -> Optional[str]:
        return self._state.request_id


class ExecStream(_StreamInfo):
    """Iterator of :class:`StreamChunk` for one streamed exec (blocking).

    Use it as ``for chunk in stream`` or ``with sandbox.exec_stream(...) as stream``.
    ``close()`` (or leaving the ``with`` block) before the end cancels the command.
    """

    def __init__(self, body: "SyncStreamBody", sandbox_id: str) -> None:
        self._body = body
        self._state = StreamState(sandbox_id, body.headers.get("x-request-id"))
        self._decoder = NDJSONDecoder()
        self._pending: Deque[Dict[str, Any]] = deque()
        self._eof = False
        self._closed = False

    def __iter__(self) -> "ExecStream":
        return self

    def __next__(self) -> StreamChunk:
        while True:
            if self._pending:
                obj = self._pending.popleft()
                try:
                    chunk = self._state.handle(obj)
                except StacyVMError:
                    self._pending.clear()
                    self._body.abort()
                    raise
                if chunk.stream == "exit":
                    self._pending.clear()
                    self._body.finish()
                return chunk
            if self._state.done or self._closed:
                raise StopIteration
            if self._eof:
                self._body.abort()
                raise self._state.interrupted("the connection ended")
            self._fill()

    def _fill(self) -> None:
        try:
            data = self._body.read()
        except StreamInterrupted as e:
            if self._closed:
                raise StopIteration from None
            raise self._state.interrupted(str(e)) from e
        if self._closed:
            raise StopIteration
        try:
            if data:
                self._pending.extend(self._decoder.feed(data))
            else:
                self._eof = True
                self._pending.extend(self._decoder.finish())
        except StacyVMError:
            self._body.abort()
            raise

    def wait(self) -> int:
        """Reads (and drops) the rest of the output; returns the exit code."""
        for _ in self:
            pass
        if self._state.exit_code is None:
            raise self._state.interrupted("the stream was closed before its end")
        return self._state.exit_code

    def close(self) -> None:
        """Stops reading. Before the exit line this closes the connection, which
        makes the server kill the command."""
        self._closed = True
        self._pending.clear()
        if not self._state.done:
            self._body.abort()

    @property
    def closed(self) -> bool:
        return self._closed or self._body.closed

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._state.done:
                self._body.abort()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __repr__(self) -> str:
        return f"ExecStream(sandbox={self._state.sandbox_id!r}, done={self.done}, exit_code={self.exit_code!r})"


class AsyncExecStream(_StreamInfo):
    """Async iterator of :class:`StreamChunk` for one streamed exec.

    The request is sent on first use: ``async for chunk in sandbox.exec_stream(...)``,
    ``stream = await sandbox.exec_stream(...)`` (sends it and raises pre-stream
    errors right away), or ``async with sandbox.exec_stream(...) as stream``.
    ``await stream.aclose()`` before the end cancels the command.
    """

    def __init__(self, start: Callable[[], Awaitable["AsyncStreamBody"]], sandbox_id: str) -> None:
        self._start: Optional[Callable[[], Awaitable["AsyncStreamBody"]]] = start
        self._body: Optional["AsyncStreamBody"] = None
        self._state = StreamState(sandbox_id, None)
        self._decoder = NDJSONDecoder()
        self._pending: Deque[Dict[str, Any]] = deque()
        self._eof = False
        self._closed = False

    async def _ensure(self) -> "AsyncStreamBody":
        if self._body is None:
            if self._start is None:
                raise StreamInterrupted("the exec stream was closed before it started")
            start, self._start = self._start, None
            self._body = await start()
            self._state.request_id = self._body.headers.get("x-request-id")
        return self._body

    async def _started(self) -> "AsyncExecStream":
        await self._ensure()
        return self

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._started().__await__()

    def __aiter__(self) -> "AsyncExecStream":
        return self

    async def __anext__(self) -> StreamChunk:
        if self._closed:
            raise StopAsyncIteration
        body = await self._ensure()
        while True:
            if self._pending:
                obj = self._pending.popleft()
                try:
                    chunk = self._state.handle(obj)
                except StacyVMError:
                    self._pending.clear()
                    await body.aclose()
                    raise
                if chunk.stream == "exit":
                    self._pending.clear()
                    await body.finish()
                return chunk
            if self._state.done or self._closed:
                raise StopAsyncIteration
            if self._eof:
                await body.aclose()
                raise self._state.interrupted("the connection ended")
            try:
                data = await body.read()
            except StreamInterrupted as e:
                if self._closed:
                    raise StopAsyncIteration from None
                raise self._state.interrupted(str(e)) from e
            except asyncio.CancelledError:
                # The read was cut at an unknown point: the stream cannot go on.
                self._closed = True
                body.abort()
                raise
            if self._closed:
                raise StopAsyncIteration
            try:
                if data:
                    self._pending.extend(self._decoder.feed(data))
                else:
                    self._eof = True
                    self._pending.extend(self._decoder.finish())
            except StacyVMError:
                await body.aclose()
                raise

    async def wait(self) -> int:
        """Reads (and drops) the rest of the output; returns the exit code."""
        async for _ in self:
            pass
        if self._state.exit_code is None:
            raise self._state.interrupted("the stream was closed before its end")
        return self._state.exit_code

    async def aclose(self) -> None:
        """Stops reading. Before the exit line this closes the connection, which
        makes the server kill the command."""
        self._closed = True
        self._start = None
        self._pending.clear()
        if self._body is not None and not self._state.done:
            await self._body.aclose()

    async def __aenter__(self) -> "AsyncExecStream":
        await self._ensure()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        try:
            if self._body is not None and not self._state.done:
                self._body.abort()
        except Exception:  # pragma: no cover - loop already closed
            pass

    def __repr__(self) -> str:
        return f"AsyncExecStream(sandbox={self._state.sandbox_id!r}, done={self.done}, exit_code={self.exit_code!r})"
