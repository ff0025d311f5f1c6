"""Wire protocol shared by the sync and async clients.

Each API operation is described once as a :class:`Call` (method, path, query,
body, expected answer); the transports in ``_sync_http`` / ``_async_http`` only
move bytes. Answers are interpreted here too, so both clients raise the same
errors for the same answers.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union
from urllib.parse import quote, urlencode, urlsplit

from stacyvm.exceptions import (
    MalformedResponse,
    StreamInterrupted,
    error_from_code,
    error_from_response,
)
from stacyvm.models import StreamChunk

API_PREFIX = "/api/v1"
VERSION = "0.1.0"
USER_AGENT = f"stacyvm-python/{VERSION}"

# Sentinels for Call.wait.
WAIT_DEFAULT = "default"  # the client's timeout
WAIT_UNBOUNDED = "unbounded"  # no client-side limit on waiting for the answer

_NO_BODY = object()


class Call:
    """One HTTP request of the API and how to read its answer.

    ``expect`` is ``"json"`` (parse JSON), ``"bytes"`` (raw body), ``"none"``
    (check status only) or ``"stream"`` (the caller reads the body itself).
    ``wait`` bounds the wait for the answer: :data:`WAIT_DEFAULT`,
    :data:`WAIT_UNBOUNDED`, or a number of seconds added to the client timeout.
    """

    __slots__ = (
        "method",
        "path",
        "query",
        "json_body",
        "raw_body",
        "content_type",
        "expect",
        "sandbox_id",
        "file_path",
        "wait",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: Optional[Dict[str, Any]] = None,
        json_body: Any = _NO_BODY,
        raw_body: Any = None,
        content_type: Optional[str] = None,
        expect: str = "json",
        sandbox_id: Optional[str] = None,
        file_path: Optional[str] = None,
        wait: Union[str, float] = WAIT_DEFAULT,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.json_body = json_body
        self.raw_body = raw_body
        self.content_type = content_type
        self.expect = expect
        self.sandbox_id = sandbox_id
        self.file_path = file_path
        self.wait = wait

    def target(self, prefix: str) -> str:
        """Request target: base path + ``/api/v1`` + path + query string."""
        t = prefix + API_PREFIX + self.path
        if self.query:
            q = {k: v for k, v in self.query.items() if v is not None}
            if q:
                t += "?" + urlencode(q, quote_via=quote)
        return t

    def body(self) -> Tuple[Any, Dict[str, str]]:
        """(body, extra headers). Body is bytes, a file-like object, or None."""
        if self.json_body is not _NO_BODY:
            data = json.dumps(self.json_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            return data, {"Content-Type": "application/json"}
        if self.raw_body is not None:
            return self.raw_body, {"Content-Type": self.content_type or "application/octet-stream"}
        return None, {}

    def replayable(self) -> bool:
        """Whether the request can be sent again on a fresh connection."""
        return self.raw_body is None or isinstance(self.raw_body, (bytes, bytearray, memoryview))


class BaseURL:
    """Parsed ``base_url``: scheme, host, port and path prefix (``/api/v1`` stripped)."""

    def __init__(self, base_url: str) -> None:
        if "://" not in base_url:
            base_url = "http://" + base_url
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https"):
            raise ValueError(f"base_url must be http:// or https://, got {base_url!r}")
        if not u.hostname:
            raise ValueError(f"base_url has no host: {base_url!r}")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        prefix = u.path.rstrip("/")
        if prefix.endswith(API_PREFIX):
            prefix = prefix[: -len(API_PREFIX)]
        self.prefix = prefix
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = (self.scheme == "https" and self.port == 443) or (self.scheme == "http" and self.port == 80)
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.url = f"{self.scheme}://{self.host_header}{self.prefix}"


def default_headers(api_key: Optional[str], user_id: Optional[str], tenant_id: Optional[str]) -> Dict[str, str]:
    h = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        h["X-API-Key"] = api_key
    if user_id:
        h["X-User-ID"] = user_id
    if tenant_id:
        h["X-Tenant-ID"] = tenant_id
    return h


def interpret(call: Call, status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """Turns a complete answer into the call's result, or raises its typed error."""
    if status < 200 or status >= 300:
        raise error_from_response(status, headers, body, sandbox_id=call.sandbox_id, path=call.file_path)
    if call.expect == "bytes":
        return body
    if call.expect == "none":
        return None
    return parse_json(body, status, headers)


def parse_json(body: bytes, status: int, headers: Mapping[str, str]) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        snippet = body[:200].decode("utf-8", errors="replace")
        raise MalformedResponse(
            f"server answered HTTP {status} with a body that is not JSON ({e}): {snippet!r}",
            status=status,
            request_id=headers.get("x-request-id"),
        ) from None


T = TypeVar("T")


def expect_type(value: Any, kind: Type[T], what: str) -> T:
    """Checks the shape of a decoded answer (MalformedResponse otherwise)."""
    if not isinstance(value, kind):
        raise MalformedResponse(f"expected {what}, got {type(value).__name__}")
    return value


# --- durations ---------------------------------------------------------------------

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DUR_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(s: str) -> Optional[float]:
    """Seconds of a Go duration string (``"1h30m"``, ``"250ms"``), or None if invalid."""
    s = s.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if not s:
        return None
    total = 0.0
    pos = 0
    for m in _DUR_RE.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        return None
    return sign * total


def to_go_duration(value: Union[str, int, float, datetime.timedelta, None]) -> Optional[str]:
    """Accepts a Go duration string, a number of seconds, or a timedelta."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a duration must be a Go duration string, seconds, or a timedelta")
    if isinstance(value, str):
        return value
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not value.is_integer():
            ms = round(value * 1000, 3)
            return f"{ms:g}ms" if ms.is_integer() else f"{value!r}s"
        return f"{int(value)}s"
    raise TypeError("a duration must be a Go duration string, seconds, or a timedelta")


def duration_seconds(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    return parse_go_duration(value)


def file_mode(mode: Union[str, int, None]) -> Optional[str]:
    """File modes go out as octal strings; an int is a permission value (``0o755``)."""
    if mode is None:
        return None
    if isinstance(mode, bool):
        raise TypeError("mode must be an octal string such as '0644' or an int such as 0o644")
    if isinstance(mode, int):
        if mode < 0 or mode > 0o7777:
            raise ValueError(f"mode {mode:#o} is out of range")
        return format(mode, "04o")
    return mode


# --- calls -------------------------------------------------------------------------


def _sb(sandbox_id: str, suffix: str = "") -> str:
    if not isinstance(sandbox_id, str) or not sandbox_id:
        raise ValueError("sandbox id must be a non-empty string")
    return f"/sandboxes/{quote(sandbox_id, safe='')}{suffix}"


def spawn_body(
    image: Optional[str] = None,
    provider: Optional[str] = None,
    memory_mb: Optional[int] = None,
    vcpus: Optional[int] = None,
    ttl: Any = None,
    owner_id: Optional[str] = None,
    template: Optional[str] = None,
    metadata: Optional[Dict[str, str]] = None,
    ports: Optional[List[int]] = None,
) -> Dict[str, Any]:
    body: Dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if provider is not None:
        body["provider"] = provider
    if memory_mb is not None:
        body["memory_mb"] = memory_mb
    if vcpus is not None:
        body["vcpus"] = vcpus
    if ttl is not None:
        body["ttl"] = to_go_duration(ttl)
    if owner_id is not None:
        body["owner_id"] = owner_id
    if template is not None:
        body["template"] = template
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if ports is not None:
        body["ports"] = list(ports)
    return body


def spawn_call(**kw: Any) -> Call:
    return Call("POST", "/sandboxes", json_body=spawn_body(**kw))


def admission_call(**kw: Any) -> Call:
    return Call("POST", "/sandboxes/admission", json_body=spawn_body(**kw))


def get_call(sandbox_id: str) -> Call:
    return Call("GET", _sb(sandbox_id), sandbox_id=sandbox_id)


def list_call() -> Call:
    return Call("GET", "/sandboxes")


def prune_call() -> Call:
    return Call("DELETE", "/sandboxes")


def destroy_call(sandbox_id: str) -> Call:
    return Call("DELETE", _sb(sandbox_id), sandbox_id=sandbox_id)


def extend_call(sandbox_id: str, ttl: Any) -> Call:
    return Call("POST", _sb(sandbox_id, "/extend"), json_body={"ttl": to_go_duration(ttl)}, sandbox_id=sandbox_id)


def logs_call(sandbox_id: str, lines: Optional[int]) -> Call:
    return Call("GET", _sb(sandbox_id, "/logs"), query={"lines": lines}, sandbox_id=sandbox_id)


def stats_call(sandbox_id: str) -> Call:
    return Call("GET", _sb(sandbox_id, "/stats"), sandbox_id=sandbox_id)


def execs_call(sandbox_id: str, limit: Optional[int]) -> Call:
    return Call("GET", _sb(sandbox_id, "/execs"), query={"limit": limit}, sandbox_id=sandbox_id)


def exec_call(
    sandbox_id: str,
    command: str,
    args: Optional[List[str]] = None,
    env: Optional[Dict[str, str]] = None,
    workdir: Optional[str] = None,
    timeout: Any = None,
    mode: Optional[str] = None,
    stream: bool = False,
) -> Call:
    body: Dict[str, Any] = {"command": command}
    if args is not None:
        body["args"] = list(args)
    if mode is not None:
        body["mode"] = mode
    if env is not None:
        body["env"] = dict(env)
    if workdir is not None:
        body["workdir"] = workdir
    t = to_go_duration(timeout)
    if t is not None:
        body["timeout"] = t
    # The answer (a sync result, or a stream's first line with its headers) may
    # only come when the command ends or first writes: wait for the exec
    # deadline plus the client timeout. Without an explicit timeout the server
    # applies its own (defaults.max_exec_timeout) and always answers.
    secs = duration_seconds(t)
    wait: Union[str, float] = WAIT_UNBOUNDED if secs is None else max(secs, 0.0)
    if stream:
        body["stream"] = True
        return Call("POST", _sb(sandbox_id, "/exec"), json_body=body, expect="stream", sandbox_id=sandbox_id, wait=wait)
    return Call("POST", _sb(sandbox_id, "/exec"), json_body=body, sandbox_id=sandbox_id, wait=wait)


def write_file_call(sandbox_id: str, path: str, content: Any, mode: Any = None) -> Call:
    m = file_mode(mode)
    if isinstance(content, str):
        body: Dict[str, Any] = {"path": path, "content": content}
        if m is not None:
            body["mode"] = m
        return Call(
            "POST", _sb(sandbox_id, "/files"), json_body=body, expect="none", sandbox_id=sandbox_id, file_path=path
        )
    if isinstance(content, (bytes, bytearray, memoryview)) or hasattr(content, "read"):
        # Raw upload: byte exact, streamed, no JSON body limit.
        return Call(
            "PUT",
            _sb(sandbox_id, "/files"),
            query={"path": path, "mode": m},
            raw_body=bytes(content) if isinstance(content, (bytearray, memoryview)) else content,
            content_type="application/octet-stream",
            expect="none",
            sandbox_id=sandbox_id,
            file_path=path,
        )
    raise TypeError("content must be str, bytes, or a binary file object")


def read_file_call(sandbox_id: str, path: str) -> Call:
    return Call(
        "GET", _sb(sandbox_id, "/files"), query={"path": path}, expect="bytes", sandbox_id=sandbox_id, file_path=path
    )


def list_files_call(sandbox_id: str, path: str) -> Call:
    return Call("GET", _sb(sandbox_id, "/files/list"), query={"path": path}, sandbox_id=sandbox_id, file_path=path)


def delete_file_call(sandbox_id: str, path: str, recursive: bool) -> Call:
    q: Dict[str, Any] = {"path": path}
    if recursive:
        q["recursive"] = "true"
    return Call("DELETE", _sb(sandbox_id, "/files"), query=q, expect="none", sandbox_id=sandbox_id, file_path=path)


def move_file_call(sandbox_id: str, old_path: str, new_path: str) -> Call:
    return Call(
        "POST",
        _sb(sandbox_id, "/files/move"),
        json_body={"old_path": old_path, "new_path": new_path},
        expect="none",
        sandbox_id=sandbox_id,
        file_path=old_path,
    )


def chmod_file_call(sandbox_id: str, path: str, mode: Any) -> Call:
    m = file_mode(mode)
    if m is None:
        raise ValueError("mode is required")
    return Call(
        "POST",
        _sb(sandbox_id, "/files/chmod"),
        json_body={"path": path, "mode": m},
        expect="none",
        sandbox_id=sandbox_id,
        file_path=path,
    )


def stat_file_call(sandbox_id: str, path: str) -> Call:
    return Call("GET", _sb(sandbox_id, "/files/stat"), query={"path": path}, sandbox_id=sandbox_id, file_path=path)


def glob_files_call(sandbox_id: str, pattern: str) -> Call:
    return Call("GET", _sb(sandbox_id, "/files/glob"), query={"pattern": pattern}, sandbox_id=sandbox_id)


def simple_get(path: str, query: Optional[Dict[str, Any]] = None) -> Call:
    return Call("GET", path, query=query)


def _tpl(name: str, suffix: str = "") -> str:
    if not isinstance(name, str) or not name:
        raise ValueError("template name must be a non-empty string")
    return f"/templates/{quote(name, safe='')}{suffix}"


def template_list_call() -> Call:
    return Call("GET", "/templates")


def template_get_call(name: str) -> Call:
    return Call("GET", _tpl(name))


def template_save_call(body: Dict[str, Any]) -> Call:
    return Call("POST", "/templates", json_body=body)


def template_update_call(name: str, body: Dict[str, Any]) -> Call:
    return Call("PUT", _tpl(name), json_body=body)


def template_delete_call(name: str) -> Call:
    return Call("DELETE", _tpl(name), expect="none")


def template_spawn_call(
    name: str,
    provider: Optional[str] = None,
    ttl: Any = None,
    owner_id: Optional[str] = None,
    metadata: Optional[Dict[str, str]] = None,
    env: Optional[Dict[str, str]] = None,
) -> Call:
    body: Dict[str, Any] = {}
    if provider is not None:
        body["provider"] = provider
    if ttl is not None:
        body["ttl"] = to_go_duration(ttl)
    if owner_id is not None:
        body["owner_id"] = owner_id
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if env is not None:
        body["env"] = dict(env)
    return Call("POST", _tpl(name, "/spawn"), json_body=body)


# --- exec streams ------------------------------------------------------------------


class NDJSONDecoder:
    """Incremental NDJSON splitter: feed bytes, get parsed objects per complete line."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> List[Dict[str, Any]]:
        self._buf += data
        out: List[Dict[str, Any]] = []
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(self._buf[start:nl])
            start = nl + 1
            obj = self._parse(line)
            if obj is not None:
                out.append(obj)
        if start:
            del self._buf[:start]
        return out

    def finish(self) -> List[Dict[str, Any]]:
        """Parses a final line that had no newline (at end of body)."""
        line = bytes(self._buf)
        self._buf.clear()
        obj = self._parse(line)
        return [] if obj is None else [obj]

    @property
    def pending(self) -> int:
        return len(self._buf)

    @staticmethod
    def _parse(line: bytes) -> Optional[Dict[str, Any]]:
        line = line.strip()
        if not line:
            return None
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise MalformedResponse(
                f"exec stream line is not JSON: {line[:200].decode('utf-8', errors='replace')!r}"
            ) from None
        if not isinstance(obj, dict):
            raise MalformedResponse(f"exec stream line is not a JSON object: {line[:200]!r}")
        return obj


class StreamState:
    """Interprets exec-stream lines; shared by the sync and async stream objects."""

    def __init__(self, sandbox_id: str, request_id: Optional[str]) -> None:
        self.sandbox_id = sandbox_id
        self.request_id = request_id
        self.exit_code: Optional[int] = None
        self.duration: Optional[str] = None
        self.timed_out = False
        self.done = False
        self.chunks = 0

    def handle(self, obj: Dict[str, Any]) -> StreamChunk:
        stream = obj.get("stream", "stdout")
        data = obj.get("data", "")
        if not isinstance(stream, str) or not isinstance(data, str):
            raise MalformedResponse(f"exec stream line has the wrong shape: {obj!r}", request_id=self.request_id)
        if stream == "error":
            code = obj.get("code")
            message = obj.get("message")
            self.done = True
            raise error_from_code(
                code if isinstance(code, str) else None,
                message if isinstance(message, str) else "exec stream failed",
                request_id=self.request_id,
                sandbox_id=self.sandbox_id,
            )
        if stream == "exit":
            code = obj.get("exit_code")
            if not isinstance(code, int) or isinstance(code, bool):
                raise MalformedResponse(f"exit line without an integer exit_code: {obj!r}", request_id=self.request_id)
            self.exit_code = code
            dur = obj.get("duration")
            self.duration = dur if isinstance(dur, str) else None
            self.timed_out = obj.get("timed_out") is True
            self.done = True
            self.chunks += 1
            return StreamChunk("exit", data, exit_code=code, duration=self.duration, timed_out=self.timed_out)
        self.chunks += 1
        return StreamChunk(stream, data)

    def interrupted(self, why: str) -> StreamInterrupted:
        return StreamInterrupted(
            f"exec stream of {self.sandbox_id} was cut off before its exit line ({why}); "
            f"{self.chunks} chunk(s) received, the exit code is unknown",
            request_id=self.request_id,
            chunks=self.chunks,
        )
