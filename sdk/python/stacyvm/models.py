"""Data objects returned by the SDK.

Every object built from a server answer keeps the answer itself in ``raw``, so
fields the server adds later are never lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = [
    "ExecResult",
    "StreamChunk",
    "SandboxInfo",
    "SpawnAdmissionDecision",
    "QuotaSummary",
    "Template",
]


def _str(d: Dict[str, Any], key: str, default: str = "") -> str:
    v = d.get(key)
    return v if isinstance(v, str) else default


def _opt_str(d: Dict[str, Any], key: str) -> Optional[str]:
    v = d.get(key)
    return v if isinstance(v, str) else None


def _int(d: Dict[str, Any], key: str, default: int = 0) -> int:
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


@dataclass
class ExecResult:
    """Result of a synchronous exec. A non-zero ``exit_code`` is a result, not an error."""

    exit_code: int
    stdout: str
    stderr: str
    #: Go-style duration string, e.g. ``"8.133952ms"``.
    duration: str = ""

    @property
    def ok(self) -> bool:
        """True when the command exited with 0."""
        return self.exit_code == 0


@dataclass
class StreamChunk:
    """One line of an exec stream.

    ``stream`` is ``"stdout"`` or ``"stderr"`` for output, and ``"exit"`` for the
    last chunk, which has ``data == ""`` and carries ``exit_code``, ``duration``
    and ``timed_out``.
    """

    stream: str
    data: str
    exit_code: Optional[int] = None
    duration: Optional[str] = None
    timed_out: bool = False


@dataclass
class SandboxInfo:
    """A sandbox as listed by :meth:`Client.list` (the server's sandbox object)."""

    id: str
    state: str
    provider: str
    image: str
    memory_mb: int = 0
    vcpus: int = 0
    created_at: str = ""
    expires_at: str = ""
    metadata: Dict[str, str] = field(default_factory=dict)
    preview_domain: str = "localhost"
    updated_at: str = ""
    owner_id: Optional[str] = None
    tenant_id: Optional[str] = None
    worker_id: Optional[str] = None
    vm_id: Optional[str] = None
    ports: List[int] = field(default_factory=list)
    preview_scheme: str = "http"
    preview_port: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SandboxInfo":
        pp = d.get("preview_port")
        md = d.get("metadata")
        ports = d.get("ports")
        return cls(
            id=_str(d, "id"),
            state=_str(d, "state"),
            provider=_str(d, "provider"),
            image=_str(d, "image"),
            memory_mb=_int(d, "memory_mb"),
            vcpus=_int(d, "vcpus"),
            created_at=_str(d, "created_at"),
            expires_at=_str(d, "expires_at"),
            metadata=dict(md) if isinstance(md, dict) else {},
            preview_domain=_str(d, "preview_domain", "localhost") or "localhost",
            updated_at=_str(d, "updated_at"),
            owner_id=_opt_str(d, "owner_id"),
            tenant_id=_opt_str(d, "tenant_id"),
            worker_id=_opt_str(d, "worker_id"),
            vm_id=_opt_str(d, "vm_id"),
            ports=[p for p in ports if isinstance(p, int)] if isinstance(ports, list) else [],
            preview_scheme=_str(d, "preview_scheme", "http") or "http",
            preview_port=pp if isinstance(pp, int) and not isinstance(pp, bool) else None,
            raw=dict(d),
        )


@dataclass
class SpawnAdmissionDecision:
    """Answer of :meth:`Client.admission`: would this spawn be admitted, and where?

    Unknown fields of the answer are kept in ``raw`` (the Go SDK crashed on them).
    """

    allowed: bool
    queueable: bool = False
    reason: str = ""
    active_sandboxes: int = 0
    max_sandboxes: int = 0
    active_owner_sandboxes: int = 0
    max_owner_sandboxes: int = 0
    max_ttl: str = ""
    message: str = ""
    provider: str = ""
    selected_worker_id: str = ""
    eligible_workers: List[str] = field(default_factory=list)
    worker_reason: str = ""
    rejected_workers: Any = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SpawnAdmissionDecision":
        ew = d.get("eligible_workers")
        return cls(
            allowed=d.get("allowed") is True,
            queueable=d.get("queueable") is True,
            reason=_str(d, "reason"),
            active_sandboxes=_int(d, "active_sandboxes"),
            max_sandboxes=_int(d, "max_sandboxes"),
            active_owner_sandboxes=_int(d, "active_owner_sandboxes"),
            max_owner_sandboxes=_int(d, "max_owner_sandboxes"),
            max_ttl=_str(d, "max_ttl"),
            message=_str(d, "message"),
            provider=_str(d, "provider"),
            selected_worker_id=_str(d, "selected_worker_id"),
            eligible_workers=[w for w in ew if isinstance(w, str)] if isinstance(ew, list) else [],
            worker_reason=_str(d, "worker_reason"),
            rejected_workers=d.get("rejected_workers"),
            raw=dict(d),
        )


@dataclass
class QuotaSummary:
    """Quota coverage counts (``GET /quotas/summary``; not served by this server yet)."""

    total: int = 0
    with_max_sandboxes: int = 0
    with_max_ttl: int = 0
    with_max_exec_timeout: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "QuotaSummary":
        return cls(
            total=_int(d, "total"),
            with_max_sandboxes=_int(d, "with_max_sandboxes"),
            with_max_ttl=_int(d, "with_max_ttl"),
            with_max_exec_timeout=_int(d, "with_max_exec_timeout"),
            raw=dict(d),
        )


@dataclass
class Template:
    """A sandbox template, with the server's field names (``cpu_cores``, ``ttl_seconds``, ``setup``).

    Build one to create or replace a template; the server's answers come back
    as ``Template`` too. Fields left ``None`` take the server's defaults
    (``defaults.memory_mb``, ``defaults.vcpus``, ``defaults.ttl``, ports
    ``[3000]``). ``vcpus`` and ``ttl`` (the Go SDK's names) are properties over
    ``cpu_cores`` and ``ttl_seconds``; a Go duration string given as
    ``ttl_seconds`` (e.g. positionally, as the Go SDK's fifth argument
    ``ttl``) is converted to whole seconds.

    A spawn from the template applies every field: image, provider, resources,
    TTL, ports, metadata (plus ``template: <name>``), ``env`` as the default
    environment of every exec, and ``setup`` commands run in order before the
    spawn answers.
    """

    name: str
    image: str
    memory_mb: Optional[int] = None
    cpu_cores: Optional[int] = None
    ttl_seconds: Optional[int] = None
    provider: str = ""
    metadata: Dict[str, str] = field(default_factory=dict)
    description: str = ""
    env: Dict[str, str] = field(default_factory=dict)
    setup: List[str] = field(default_factory=list)
    ports: Optional[List[int]] = None
    #: Set by the server: 1 at creation, +1 on every update.
    version: int = 0
    created_at: str = ""
    updated_at: str = ""
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.ttl_seconds, str):
            from stacyvm._protocol import parse_go_duration

            secs = parse_go_duration(self.ttl_seconds)
            if secs is None or secs <= 0 or not float(secs).is_integer():
                raise ValueError(
                    f"invalid ttl {self.ttl_seconds!r}: use a positive whole number of seconds in Go syntax, such as 30m"
                )
            self.ttl_seconds = int(secs)

    @property
    def vcpus(self) -> Optional[int]:
        return self.cpu_cores

    @vcpus.setter
    def vcpus(self, value: Optional[int]) -> None:
        self.cpu_cores = value

    @property
    def ttl(self) -> Optional[str]:
        return None if self.ttl_seconds is None else f"{self.ttl_seconds}s"

    @ttl.setter
    def ttl(self, value: str) -> None:
        self.ttl_seconds = value  # type: ignore[assignment]
        self.__post_init__()

    def to_dict(self) -> Dict[str, Any]:
        """The request body for ``POST``/``PUT /templates`` (``None`` fields left out)."""
        body: Dict[str, Any] = {"name": self.name, "image": self.image}
        if self.provider:
            body["provider"] = self.provider
        if self.description:
            body["description"] = self.description
        if self.memory_mb is not None:
            body["memory_mb"] = self.memory_mb
        if self.cpu_cores is not None:
            body["cpu_cores"] = self.cpu_cores
        if self.ttl_seconds is not None:
            body["ttl_seconds"] = self.ttl_seconds
        if self.env:
            body["env"] = dict(self.env)
        if self.setup:
            body["setup"] = list(self.setup)
        if self.metadata:
            body["metadata"] = dict(self.metadata)
        if self.ports is not None:
            body["ports"] = list(self.ports)
        return body

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Template":
        setup = d.get("setup")
        env = d.get("env")
        metadata = d.get("metadata")
        ports = d.get("ports")
        mem = d.get("memory_mb")
        cpus = d.get("cpu_cores")
        ttl = d.get("ttl_seconds")
        return cls(
            name=_str(d, "name"),
            image=_str(d, "image"),
            memory_mb=mem if isinstance(mem, int) and not isinstance(mem, bool) else None,
            cpu_cores=cpus if isinstance(cpus, int) and not isinstance(cpus, bool) else None,
            ttl_seconds=ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None,
            provider=_str(d, "provider"),
            metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {},
            description=_str(d, "description"),
            env={str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {},
            setup=[s for s in setup if isinstance(s, str)] if isinstance(setup, list) else [],
            ports=[x for x in ports if isinstance(x, int)] if isinstance(ports, list) else None,
            version=_int(d, "version"),
            created_at=_str(d, "created_at"),
            updated_at=_str(d, "updated_at"),
            raw=dict(d),
        )
