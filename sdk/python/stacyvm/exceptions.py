"""Typed errors of the StacyVM SDK.

Every error the SDK raises is a :class:`StacyVMError`. Errors answered by the
server carry its envelope ``{code, message, request_id, details?}``: the class
is chosen from ``code`` (falling back to the HTTP status when a proxy answered
without the envelope), ``str(err)`` is the server's message.

Hierarchy::

    StacyVMError
    ├── BadRequest            400 BAD_REQUEST
    ├── Unauthorized          401 UNAUTHORIZED
    ├── Forbidden             403 FORBIDDEN
    ├── NotFound              404 NOT_FOUND
    │   ├── SandboxNotFound       the sandbox itself is unknown or destroyed
    │   └── FileNotFound          a path inside a sandbox does not exist
    ├── Timeout               408 TIMEOUT (the command hit its exec deadline)
    ├── Conflict              409 CONFLICT
    ├── PayloadTooLarge       413 PAYLOAD_TOO_LARGE
    ├── ResourceLimit         429 RESOURCE_LIMIT
    ├── ProviderError         any 5xx (the Go SDK's name for server-side failures)
    │   ├── InternalError         500 INTERNAL_ERROR
    │   └── Unavailable           503 UNAVAILABLE
    ├── ConnectionError       the server could not be reached or the connection broke
    │   ├── ClientTimeout         no answer within the client's ``timeout``
    │   └── StreamInterrupted     a response (e.g. an exec stream) was cut off mid-way
    └── MalformedResponse     the server answered something that is not the documented shape
"""

from __future__ import annotations

import builtins
import json
from typing import Any, Dict, List, Mapping, Optional, Type

__all__ = [
    "StacyVMError",
    "ForgevmError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "SandboxNotFound",
    "FileNotFound",
    "Timeout",
    "Conflict",
    "PayloadTooLarge",
    "ResourceLimit",
    "ProviderError",
    "InternalError",
    "Unavailable",
    "ConnectionError",
    "ClientTimeout",
    "StreamInterrupted",
    "MalformedResponse",
    "error_from_code",
    "error_from_response",
]


class StacyVMError(Exception):
    """Base class of every SDK error.

    Attributes:
        message: the server's message (or the SDK's, for client-side errors).
        code: the server's error code (``NOT_FOUND``...), or an SDK code such as
            ``CONNECTION_ERROR`` / ``MALFORMED_RESPONSE``.
        status: the HTTP status, ``None`` when there was no HTTP answer.
        request_id: the server's request id (body ``request_id`` or the
            ``X-Request-ID`` header), for finding the request in the server log.
        details: the server's ``[{"field", "problem"}]`` list, or ``[]``.
    """

    default_code: Optional[str] = None

    def __init__(
        self,
        message: str,
        code: Optional[str] = None,
        status: Optional[int] = None,
        request_id: Optional[str] = None,
        details: Optional[List[Dict[str, Any]]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.status = status
        self.request_id = request_id
        self.details: List[Dict[str, Any]] = list(details) if details else []

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        parts = [repr(self.message)]
        if self.code is not None:
            parts.append(f"code={self.code!r}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.request_id is not None:
            parts.append(f"request_id={self.request_id!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


#: Name of the base class in early releases of the Go original's SDK.
ForgevmError = StacyVMError


class BadRequest(StacyVMError):
    """400: the request is invalid (see ``details`` for the fields at fault)."""

    default_code = "BAD_REQUEST"


class Unauthorized(StacyVMError):
    """401: missing or wrong API key."""

    default_code = "UNAUTHORIZED"


class Forbidden(StacyVMError):
    """403: the key lacks the role, or the sandbox denied a file permission."""

    default_code = "FORBIDDEN"


class NotFound(StacyVMError):
    """404: unknown sandbox, provider, worker, file or route."""

    default_code = "NOT_FOUND"


class SandboxNotFound(NotFound):
    """404 for the sandbox itself (unknown or destroyed). ``sandbox_id`` names it."""

    def __init__(self, message: str, *args: Any, sandbox_id: Optional[str] = None, **kwargs: Any):
        super().__init__(message, *args, **kwargs)
        self.sandbox_id = sandbox_id


class FileNotFound(NotFound):
    """404 for a path inside a sandbox. ``path`` names it when known."""

    def __init__(self, message: str, *args: Any, path: Optional[str] = None, **kwargs: Any):
        super().__init__(message, *args, **kwargs)
        self.path = path


class Timeout(StacyVMError):
    """408: a synchronous exec hit its deadline; the command was killed."""

    default_code = "TIMEOUT"


class Conflict(StacyVMError):
    """409: the sandbox is not ``running``, a destroy is in progress, or a lease is stale."""

    default_code = "CONFLICT"


class PayloadTooLarge(StacyVMError):
    """413: a JSON body above the server's ``server.max_body_bytes``."""

    default_code = "PAYLOAD_TOO_LARGE"


class ResourceLimit(StacyVMError):
    """429: TTL above ``max_ttl``, sandbox caps reached, no eligible worker, disk full."""

    default_code = "RESOURCE_LIMIT"


class ProviderError(StacyVMError):
    """Any 5xx answer: the server or its provider/worker failed (not the caller's fault)."""

    default_code = "PROVIDER_ERROR"


class InternalError(ProviderError):
    """500: a server fault; the server logs the cause under ``request_id``."""

    default_code = "INTERNAL_ERROR"


class Unavailable(ProviderError):
    """503: a worker or the database is not answering (retryable)."""

    default_code = "UNAVAILABLE"


class ConnectionError(StacyVMError, builtins.ConnectionError):  # noqa: A001 - the Go SDK's name
    """The server could not be reached, or the connection failed during a call.

    It is also a built-in :class:`ConnectionError` (an ``OSError``), so either
    ``except stacyvm.ConnectionError`` or ``except ConnectionError`` catches it.
    """

    default_code = "CONNECTION_ERROR"

    def __init__(self, message: str, *args: Any, **kwargs: Any) -> None:
        StacyVMError.__init__(self, message, *args, **kwargs)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:  # pragma: no cover - pickling support only
        return (type(self), (self.message, self.code, self.status, self.request_id, self.details))


class ClientTimeout(ConnectionError):
    """The server did not answer within the client's ``timeout``."""

    default_code = "CLIENT_TIMEOUT"


class StreamInterrupted(ConnectionError):
    """A response was cut off before its end.

    For exec streams: the connection closed or failed before the final ``exit``
    line, so the exit code is unknown. ``chunks`` counts the chunks received.
    """

    default_code = "STREAM_INTERRUPTED"

    def __init__(self, message: str, *args: Any, chunks: int = 0, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        self.chunks = chunks


class MalformedResponse(StacyVMError):
    """The server's answer is not what the API documents (bad JSON, wrong shape)."""

    default_code = "MALFORMED_RESPONSE"


_BY_CODE: Dict[str, Type[StacyVMError]] = {
    "BAD_REQUEST": BadRequest,
    "UNAUTHORIZED": Unauthorized,
    "FORBIDDEN": Forbidden,
    "NOT_FOUND": NotFound,
    "TIMEOUT": Timeout,
    "CONFLICT": Conflict,
    "PAYLOAD_TOO_LARGE": PayloadTooLarge,
    "RESOURCE_LIMIT": ResourceLimit,
    "INTERNAL_ERROR": InternalError,
    "UNAVAILABLE": Unavailable,
}

_STATUS_BY_CODE: Dict[str, int] = {
    "BAD_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "TIMEOUT": 408,
    "CONFLICT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "RESOURCE_LIMIT": 429,
    "INTERNAL_ERROR": 500,
    "UNAVAILABLE": 503,
}

_BY_STATUS: Dict[int, Type[StacyVMError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: Timeout,
    409: Conflict,
    413: PayloadTooLarge,
    429: ResourceLimit,
    500: InternalError,
    503: Unavailable,
}


def _class_for(code: Optional[str], status: Optional[int]) -> Type[StacyVMError]:
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if status is not None:
        if status in _BY_STATUS:
            return _BY_STATUS[status]
        if status >= 500:
            return ProviderError
    return StacyVMError


def error_from_code(
    code: Optional[str],
    message: str,
    status: Optional[int] = None,
    request_id: Optional[str] = None,
    details: Optional[List[Dict[str, Any]]] = None,
    sandbox_id: Optional[str] = None,
    path: Optional[str] = None,
) -> StacyVMError:
    """Builds the typed error for a server error code (used for HTTP errors and
    for the ``error`` line of an exec stream)."""
    if status is None and code is not None:
        status = _STATUS_BY_CODE.get(code)
    cls = _class_for(code, status)
    if cls is NotFound:
        lowered = message.lower()
        if lowered.startswith("sandbox ") or (sandbox_id is not None and sandbox_id in message):
            return SandboxNotFound(
                message,
                code=code or "NOT_FOUND",
                status=status,
                request_id=request_id,
                details=details,
                sandbox_id=sandbox_id,
            )
        if sandbox_id is not None and path is not None:
            return FileNotFound(
                message,
                code=code or "NOT_FOUND",
                status=status,
                request_id=request_id,
                details=details,
                path=path,
            )
    if cls is StacyVMError or cls is ProviderError:
        # Keep the server's own code (or none) when the class does not imply one.
        return cls(
            message,
            code=code or cls.default_code,
            status=status,
            request_id=request_id,
            details=details,
        )
    return cls(message, code=code, status=status, request_id=request_id, details=details)


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    sandbox_id: Optional[str] = None,
    path: Optional[str] = None,
) -> StacyVMError:
    """Builds the typed error for a non-2xx HTTP answer.

    ``headers`` must have lower-case names. A body that is not the JSON envelope
    (e.g. a reverse proxy's HTML page) still gives the class for its status, with
    the start of the body as the message.
    """
    request_id = headers.get("x-request-id")
    code: Optional[str] = None
    message: Optional[str] = None
    details: Optional[List[Dict[str, Any]]] = None
    try:
        data = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        data = None
    if isinstance(data, dict):
        if isinstance(data.get("code"), str):
            code = data["code"]
        if isinstance(data.get("message"), str):
            message = data["message"]
        if isinstance(data.get("request_id"), str):
            request_id = data["request_id"]
        if isinstance(data.get("details"), list):
            details = [d for d in data["details"] if isinstance(d, dict)]
    if message is None:
        text = body[:500].decode("utf-8", errors="replace").strip()
        message = text or f"HTTP {status}"
        if code is None:
            message = f"HTTP {status}: {message}" if text else message
    return error_from_code(
        code,
        message,
        status=status,
        request_id=request_id,
        details=details,
        sandbox_id=sandbox_id,
        path=path,
    )
