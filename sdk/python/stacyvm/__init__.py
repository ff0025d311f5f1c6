"""StacyVM Python SDK: a standard-library-only client for the StacyVM sandbox server.

from stacyvm import Client

with Client("http://127.0.0.1:7423", api_key="...") as client:
    with client.spawn() as sb:
        print(sb.exec("echo hello").stdout)
"""

from stacyvm._protocol import VERSION as __version__
from stacyvm.async_client import AsyncClient, SpawnContext
from stacyvm.async_sandbox import AsyncSandbox
from stacyvm.client import Client
from stacyvm.exceptions import (
    BadRequest,
    ClientTimeout,
    Conflict,
    ConnectionError,
    FileNotFound,
    Forbidden,
    ForgevmError,
    InternalError,
    MalformedResponse,
    NotFound,
    PayloadTooLarge,
    ProviderError,
    ResourceLimit,
    SandboxNotFound,
    StacyVMError,
    StreamInterrupted,
    Timeout,
    Unauthorized,
    Unavailable,
)
from stacyvm.models import (
    ExecResult,
    QuotaSummary,
    SandboxInfo,
    SpawnAdmissionDecision,
    StreamChunk,
    Template,
)
from stacyvm.sandbox import Sandbox
from stacyvm.streaming import AsyncExecStream, ExecStream
from stacyvm.templates import AsyncTemplateManager, TemplateManager

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "Sandbox",
    "AsyncSandbox",
    "SpawnContext",
    "ExecStream",
    "AsyncExecStream",
    "TemplateManager",
    "AsyncTemplateManager",
    "ExecResult",
    "StreamChunk",
    "SandboxInfo",
    "SpawnAdmissionDecision",
    "QuotaSummary",
    "Template",
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
]
