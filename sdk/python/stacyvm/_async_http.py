"""Asyncio HTTP/1.1 transport on asyncio streams, with a small keep-alive pool.

A minimal client for the one server it talks to: requests with Content-Length
or chunked bodies; answers framed by Content-Length, chunked encoding, or the
end of the connection.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, AsyncGenerator, Dict, List, Optional, Tuple

from stacyvm import _protocol as p
from stacyvm.exceptions import (
    ClientTimeout,
    ConnectionError,
    MalformedResponse,
    StreamInterrupted,
)

_READ_SIZE = 64 * 1024
_LIMIT = 1024 * 1024  # longest header / chunk-size line


class _Closed(Exception):
    """The connection ended where the protocol needed more bytes."""


class _Conn:
    __slots__ = ("reader", "writer", "loop")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()

    def usable(self) -> bool:
        try:
            same_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:  # pragma: no cover
            return False
        return same_loop and not self.reader.at_eof() and not self.writer.is_closing()

    def abort(self) -> None:
        try:
            self.writer.transport.abort()
        except Exception:  # pragma: no cover - the loop may be gone
            pass


async def _maybe_wait(coro: Any, timeout: Optional[float]) -> Any:
    if timeout is None:
        return await coro
    return await asyncio.wait_for(coro, timeout)


class AsyncTransport:
    def __init__(self, base: p.BaseURL, headers: Dict[str, str], timeout: Optional[float], max_idle: int = 8) -> None:
        self.base = base
        self.headers = headers
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: List[_Conn] = []
        self._closed = False
        self._ssl: Optional[ssl.SSLContext] = ssl.create_default_context() if base.scheme == "https" else None

    async def _connect(self) -> _Conn:
        try:
            reader, writer = await _maybe_wait(
                asyncio.open_connection(
                    self.base.host,
                    self.base.port,
                    ssl=self._ssl,
                    limit=_LIMIT,
                    server_hostname=self.base.host if self._ssl else None,
                ),
                self.timeout,
            )
        except asyncio.TimeoutError:
            raise ClientTimeout(f"timed out connecting to the StacyVM server at {self.base.url}") from None
        except OSError as e:
            raise ConnectionError(f"cannot connect to the StacyVM server at {self.base.url}: {e}") from e
        return _Conn(reader, writer)

    async def _acquire(self) -> Tuple[_Conn, bool]:
        if self._closed:
            raise ConnectionError("the client is closed")
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn, True
            conn.abort()
        return await self._connect(), False

    def _release(self, conn: _Conn) -> None:
        if not self._closed and len(self._idle) < self.max_idle and conn.usable():
            self._idle.append(conn)
        else:
            conn.abort()

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for c in idle:
            try:
                c.writer.close()
                await asyncio.wait_for(c.writer.wait_closed(), 1.0)
            except Exception:
                c.abort()

    def _wait_timeout(self, call: p.Call) -> Optional[float]:
        if call.wait == p.WAIT_UNBOUNDED:
            return None
        if call.wait == p.WAIT_DEFAULT or self.timeout is None:
            return self.timeout
        return self.timeout + float(call.wait)

    # -- request writing --------------------------------------------------------------

    async def _write_request(self, conn: _Conn, call: p.Call) -> None:
        body, extra = call.body()
        headers = dict(self.headers)
        headers.update(extra)
        headers["Host"] = self.base.host_header
        chunked = False
        if body is None:
            if call.method in ("POST", "PUT"):
                headers["Content-Length"] = "0"
        elif isinstance(body, (bytes, bytearray)):
            headers["Content-Length"] = str(len(body))
        else:
            headers["Transfer-Encoding"] = "chunked"
            chunked = True
        head = f"{call.method} {call.target(self.base.prefix)} HTTP/1.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        w = conn.writer
        w.write(head.encode("latin-1"))
        if isinstance(body, (bytes, bytearray)):
            w.write(bytes(body))
        elif chunked:
            while True:
                piece = body.read(_READ_SIZE)
                if not piece:
                    break
                if isinstance(piece, str):
                    piece = piece.encode("utf-8")
                w.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                await _maybe_wait(w.drain(), self.timeout)
            w.write(b"0\r\n\r\n")
        await _maybe_wait(w.drain(), self.timeout)

    # -- answer reading -----------------------------------------------------------------

    @staticmethod
    async def _readline(reader: asyncio.StreamReader) -> bytes:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                raise _Closed("connection closed") from None
            raise _Closed("connection closed in the middle of a line") from None
        except asyncio.LimitOverrunError:
            raise MalformedResponse("answer has a header or chunk line longer than 1 MiB") from None
        return line

    async def _read_head(self, reader: asyncio.StreamReader) -> Tuple[int, Dict[str, str]]:
        while True:
            line = await self._readline(reader)
            parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise MalformedResponse(f"not an HTTP status line: {line[:100]!r}")
            status = int(parts[1])
            headers: Dict[str, str] = {}
            while True:
                h = await self._readline(reader)
                if h in (b"\r\n", b"\n"):
                    break
                name, sep, value = h.decode("latin-1").partition(":")
                if not sep:
                    raise MalformedResponse(f"bad header line: {h[:100]!r}")
                k = name.strip().lower()
                v = value.strip()
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
            if 100 <= status < 200:
                continue  # interim answer
            return status, headers

    async def _body_chunks(
        self, conn: _Conn, status: int, headers: Dict[str, str], method: str, timeout: Optional[float]
    ) -> AsyncGenerator[bytes, None]:
        """Yields the body; on normal end the connection goes back to the pool."""
        reader = conn.reader
        reusable = "close" not in headers.get("connection", "").lower()
        if method == "HEAD" or status in (204, 304):
            self._release(conn) if reusable else conn.abort()
            return
        te = headers.get("transfer-encoding", "").lower()
        if "chunked" in te:
            while True:
                size_line = await _maybe_wait(self._readline(reader), timeout)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise MalformedResponse(f"bad chunk size line: {size_line[:100]!r}") from None
                if size == 0:
                    while (await _maybe_wait(self._readline(reader), timeout)) not in (b"\r\n", b"\n"):
                        pass  # trailers
                    break
                left = size
                while left:
                    data = await _maybe_wait(reader.read(min(left, _READ_SIZE)), timeout)
                    if not data:
                        raise _Closed("connection closed inside a chunk")
                    left -= len(data)
                    yield data
                if await _maybe_wait(self._readline(reader), timeout) not in (b"\r\n", b"\n"):
                    raise MalformedResponse("chunk not followed by CRLF")
        elif "content-length" in headers:
            try:
                left = int(headers["content-length"])
            except ValueError:
                raise MalformedResponse(f"bad Content-Length {headers['content-length']!r}") from None
            while left > 0:
                data = await _maybe_wait(reader.read(min(left, _READ_SIZE)), timeout)
                if not data:
                    raise _Closed(f"connection closed with {left} body bytes missing")
                left -= len(data)
                yield data
        else:
            reusable = False
            while True:
                data = await _maybe_wait(reader.read(_READ_SIZE), timeout)
                if not data:
                    break
                yield data
        if reusable:
            self._release(conn)
        else:
            conn.abort()

    async def _send(self, call: p.Call) -> Tuple[_Conn, int, Dict[str, str]]:
        attempts = 2 if call.replayable() else 1
        for attempt in range(attempts):
            conn, reused = await self._acquire()
            try:
                await self._write_request(conn, call)
                status, headers = await _maybe_wait(self._read_head(conn.reader), self._wait_timeout(call))
                return conn, status, headers
            except (_Closed, ConnectionResetError, BrokenPipeError) as e:
                conn.abort()
                if reused and attempt + 1 < attempts:
                    continue
                raise ConnectionError(
                    f"the StacyVM server at {self.base.url} closed the connection without answering "
                    f"{call.method} {call.path}: {e}"
                ) from e
            except asyncio.TimeoutError:
                conn.abort()
                raise ClientTimeout(
                    f"no answer from the StacyVM server at {self.base.url} to {call.method} {call.path} "
                    f"within the timeout"
                ) from None
            except OSError as e:
                conn.abort()
                raise ConnectionError(f"request {call.method} {call.path} to {self.base.url} failed: {e!r}") from e
            except BaseException:
                conn.abort()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def request(self, call: p.Call) -> Any:
        conn, status, headers = await self._send(call)
        parts: List[bytes] = []
        try:
            async for piece in self._body_chunks(conn, status, headers, call.method, self.timeout):
                parts.append(piece)
        except asyncio.TimeoutError:
            conn.abort()
            raise ClientTimeout(f"timed out reading the answer to {call.method} {call.path}") from None
        except (_Closed, OSError) as e:
            conn.abort()
            raise StreamInterrupted(f"answer to {call.method} {call.path} was cut off: {e}", status=status) from e
        except BaseException:
            conn.abort()
            raise
        return p.interpret(call, status, headers, b"".join(parts))

    async def open_stream(self, call: p.Call) -> "AsyncStreamBody":
        conn, status, headers = await self._send(call)
        if status < 200 or status >= 300:
            parts: List[bytes] = []
            try:
                async for piece in self._body_chunks(conn, status, headers, call.method, self.timeout):
                    parts.append(piece)
            except (asyncio.TimeoutError, _Closed, OSError, MalformedResponse):
                conn.abort()  # the status alone still names the error
            except BaseException:
                conn.abort()
                raise
            p.interpret(call, status, headers, b"".join(parts))  # raises
        return AsyncStreamBody(self, conn, status, headers, call.method)


class AsyncStreamBody:
    """The body of a streamed answer; the client timeout never applies to it."""

    def __init__(self, transport: AsyncTransport, conn: _Conn, status: int, headers: Dict[str, str], method: str):
        self._conn: Optional[_Conn] = conn
        self.status = status
        self.headers = headers
        self._iter = transport._body_chunks(conn, status, headers, method, None)

    async def read(self) -> bytes:
        if self._conn is None:
            return b""
        try:
            return await self._iter.__anext__()
        except StopAsyncIteration:
            self._conn = None  # released (or closed) by the body iterator
            return b""
        except (_Closed, OSError, MalformedResponse) as e:
            self.abort()
            raise StreamInterrupted(f"connection failed: {e}") from e

    async def finish(self) -> None:
        """After the last line: read the end of the body so the connection is pooled."""
        if self._conn is None:
            return
        try:
            while True:
                await _maybe_wait(self._iter.__anext__(), 5.0)
        except StopAsyncIteration:
            self._conn = None
        except BaseException:
            await self.aclose()
            raise

    def abort(self) -> None:
        """Closes the connection now; the server sees it and kills the command."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    async def aclose(self) -> None:
        self.abort()
        try:
            await self._iter.aclose()
        except Exception:  # e.g. the generator is mid-read in a cancelled task
            pass

    @property
    def closed(self) -> bool:
        return self._conn is None
