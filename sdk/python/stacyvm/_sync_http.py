"""Blocking HTTP transport on http.client, with a small keep-alive pool."""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from typing import Any, Dict, List, Optional, Tuple

from stacyvm import _protocol as p
from stacyvm.exceptions import ClientTimeout, ConnectionError, StreamInterrupted

_READ_SIZE = 64 * 1024
# Failures on a reused keep-alive connection that mean "the server had already
# closed it": the request is sent again once on a fresh connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


def _lower_headers(resp: http.client.HTTPResponse) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in resp.getheaders():
        k = k.lower()
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def _is_fresh(conn: http.client.HTTPConnection) -> bool:
    """An idle pooled connection is usable if the server has not closed it."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    # Readable while idle means EOF (or unexpected bytes): either way, unusable.
    return not readable


def _hard_close(conn: http.client.HTTPConnection) -> None:
    """Closes the socket now (FIN sent even if a response object still holds it)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    conn.close()


class SyncTransport:
    def __init__(self, base: p.BaseURL, headers: Dict[str, str], timeout: Optional[float], max_idle: int = 8) -> None:
        self.base = base
        self.headers = headers
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: List[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._ssl: Optional[ssl.SSLContext] = ssl.create_default_context() if base.scheme == "https" else None

    # -- connections ----------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.base.host, self.base.port, timeout=self.timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self.base.host, self.base.port, timeout=self.timeout)
        try:
            conn.connect()
        except socket.timeout:
            conn.close()
            raise ClientTimeout(f"timed out connecting to the StacyVM server at {self.base.url}") from None
        except OSError as e:
            conn.close()
            raise ConnectionError(f"cannot connect to the StacyVM server at {self.base.url}: {e}") from e
        return conn

    def _acquire(self) -> Tuple[http.client.HTTPConnection, bool]:
        if self._closed:
            raise ConnectionError("the client is closed")
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if _is_fresh(conn):
                    return conn, True
                conn.close()
        return self._connect(), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        if conn.sock is not None:
            conn.sock.settimeout(self.timeout)
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle and conn.sock is not None:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # -- requests -------------------------------------------------------------------

    def _wait_timeout(self, call: p.Call) -> Optional[float]:
        if call.wait == p.WAIT_UNBOUNDED:
            return None
        if call.wait == p.WAIT_DEFAULT or self.timeout is None:
            return self.timeout
        return self.timeout + float(call.wait)

    def _send(self, call: p.Call) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Sends the request and reads the status line and headers."""
        body, extra = call.body()
        headers = dict(self.headers)
        headers.update(extra)
        if isinstance(body, (bytes, bytearray)):
            headers["Content-Length"] = str(len(body))
        elif body is None and call.method in ("POST", "PUT"):
            headers["Content-Length"] = "0"
        target = call.target(self.base.prefix)
        attempts = 2 if call.replayable() else 1
        for attempt in range(attempts):
            conn, reused = self._acquire()
            try:
                conn.request(call.method, target, body=body, headers=headers)
                if conn.sock is not None:
                    conn.sock.settimeout(self._wait_timeout(call))
                resp = conn.getresponse()
                return conn, resp
            except _STALE as e:
                conn.close()
                if reused and attempt + 1 < attempts:
                    continue
                raise ConnectionError(
                    f"the StacyVM server at {self.base.url} closed the connection without answering "
                    f"{call.method} {call.path}: {e}"
                ) from e
            except socket.timeout:
                _hard_close(conn)
                raise ClientTimeout(
                    f"no answer from the StacyVM server at {self.base.url} to {call.method} {call.path} "
                    f"within the timeout"
                ) from None
            except (OSError, http.client.HTTPException) as e:
                _hard_close(conn)
                raise ConnectionError(f"request {call.method} {call.path} to {self.base.url} failed: {e!r}") from e
        raise AssertionError("unreachable")  # pragma: no cover

    def request(self, call: p.Call) -> Any:
        """Sends a call and returns its interpreted result (JSON, bytes or None)."""
        conn, resp = self._send(call)
        try:
            data = resp.read()
        except socket.timeout:
            _hard_close(conn)
            raise ClientTimeout(f"timed out reading the answer to {call.method} {call.path}") from None
        except http.client.IncompleteRead as e:
            _hard_close(conn)
            raise StreamInterrupted(
                f"answer to {call.method} {call.path} was cut off after {len(e.partial)} bytes"
                + (f" of {len(e.partial) + e.expected}" if e.expected else ""),
                status=resp.status,
            ) from None
        except (OSError, http.client.HTTPException) as e:
            _hard_close(conn)
            raise StreamInterrupted(f"answer to {call.method} {call.path} was cut off: {e!r}") from e
        headers = _lower_headers(resp)
        if resp.will_close:
            conn.close()
        else:
            self._release(conn)
        return p.interpret(call, resp.status, headers, data)

    def open_stream(self, call: p.Call) -> "SyncStreamBody":
        """Sends a streaming call; returns the open body (errors are raised here)."""
        conn, resp = self._send(call)
        headers = _lower_headers(resp)
        if resp.status < 200 or resp.status >= 300:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException):
                data = b""
            _hard_close(conn)
            p.interpret(call, resp.status, headers, data)  # raises
        # The client timeout never cuts a live stream: the server bounds it with
        # the exec deadline.
        if conn.sock is not None:
            conn.sock.settimeout(None)
        return SyncStreamBody(self, conn, resp, headers)


class SyncStreamBody:
    """The body of a streamed answer, read incrementally."""

    def __init__(
        self,
        transport: SyncTransport,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        headers: Dict[str, str],
    ) -> None:
        self._transport = transport
        self._conn: Optional[http.client.HTTPConnection] = conn
        self._resp = resp
        self.status = resp.status
        self.headers = headers
        self._lock = threading.Lock()

    def read(self) -> bytes:
        """Next bytes of the body as soon as some arrive; ``b""`` at its end."""
        if self._conn is None:
            return b""
        try:
            return self._resp.read1(_READ_SIZE)
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
            self.abort()
            raise StreamInterrupted(f"connection failed: {e!r}") from e

    def finish(self) -> None:
        """After the last line: drains the (already ended) body and pools the connection."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if conn.sock is not None:
                conn.sock.settimeout(self._transport.timeout)
            self._resp.read()
        except (OSError, http.client.HTTPException, ValueError):
            _hard_close(conn)
            return
        if self._resp.will_close:
            conn.close()
        else:
            self._transport._release(conn)

    def abort(self) -> None:
        """Closes the connection now; the server sees it and kills the command."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        _hard_close(conn)
        try:
            self._resp.close()
        except Exception:  # pragma: no cover - closing a broken response
            pass

    @property
    def closed(self) -> bool:
        return self._conn is None
