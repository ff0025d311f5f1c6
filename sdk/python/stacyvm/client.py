"""The blocking client."""

from __future__ import annotations

import datetime
from typing import Any, Dict, List, Optional, Union

from stacyvm import _protocol as p
from stacyvm._sync_http import SyncTransport
from stacyvm.exceptions import MalformedResponse
from stacyvm.models import QuotaSummary, SandboxInfo, SpawnAdmissionDecision
from stacyvm.sandbox import Sandbox
from stacyvm.templates import TemplateManager

__all__ = ["Client"]

Duration = Union[str, int, float, datetime.timedelta]


def sandbox_data(data: Any) -> Dict[str, Any]:
    obj: Dict[str, Any] = p.expect_type(data, dict, "a sandbox object")
    if not isinstance(obj.get("id"), str) or not obj["id"]:
        raise MalformedResponse(f"sandbox object without an id: {obj!r}")
    return obj


def sandbox_list(data: Any) -> List[SandboxInfo]:
    return [SandboxInfo.from_dict(s) for s in p.expect_type(data, list, "a list of sandboxes") if isinstance(s, dict)]


def pruned(data: Any) -> int:
    n = p.expect_type(data, dict, "a prune result").get("pruned")
    if not isinstance(n, int):
        raise MalformedResponse(f"prune result without a count: {data!r}")
    return n


class Client:
    """Blocking client for a StacyVM server.

    Args:
        base_url: server URL, e.g. ``http://127.0.0.1:7423`` (``/api/v1`` is added;
            a URL that already ends with it is fine).
        api_key: sent as ``X-API-Key`` on every request.
        user_id: sent as ``X-User-ID``: the owner of spawned sandboxes.
        timeout: seconds to wait for the server to connect and answer. It does
            not cut exec streams, and a synchronous exec waits for its own
            deadline on top of it.
        tenant_id: sent as ``X-Tenant-ID``: scopes sandboxes to a tenant.

    The client keeps a few connections alive between calls and is safe to share
    between threads. ``with Client(...) as client:`` closes them at the end.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:7423",
        api_key: Optional[str] = None,
        user_id: Optional[str] = None,
        timeout: Optional[float] = 30.0,
        tenant_id: Optional[str] = None,
    ) -> None:
        self.base_url = p.BaseURL(base_url).url
        self.timeout = timeout
        self._http = SyncTransport(p.BaseURL(base_url), p.default_headers(api_key, user_id, tenant_id), timeout)
        self.templates = TemplateManager(self._http)

    # -- sandboxes ------------------------------------------------------------------------

    def spawn(
        self,
        image: Optional[str] = None,
        provider: Optional[str] = None,
        memory_mb: Optional[int] = None,
        vcpus: Optional[int] = None,
        ttl: Optional[Duration] = None,
        owner_id: Optional[str] = None,
        template: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        ports: Optional[List[int]] = None,
    ) -> Sandbox:
        """Creates a sandbox. Omitted fields take the server's defaults
        (``defaults.image``, ``defaults.ttl``...). ``ttl`` is a Go duration
        (``"10m"``), seconds, or a timedelta. ``template`` is accepted and ignored
        by the server (spawn from a template with ``templates.spawn(name)``)."""
        call = p.spawn_call(
            image=image,
            provider=provider,
            memory_mb=memory_mb,
            vcpus=vcpus,
            ttl=ttl,
            owner_id=owner_id,
            template=template,
            metadata=metadata,
            ports=ports,
        )
        data = sandbox_data(self._http.request(call))
        return Sandbox(self._http, data["id"], info=data)

    def admission(
        self,
        image: Optional[str] = None,
        provider: Optional[str] = None,
        memory_mb: Optional[int] = None,
        vcpus: Optional[int] = None,
        ttl: Optional[Duration] = None,
        owner_id: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        ports: Optional[List[int]] = None,
    ) -> SpawnAdmissionDecision:
        """Would this spawn be admitted, and where would it run? Creates nothing."""
        call = p.admission_call(
            image=image,
            provider=provider,
            memory_mb=memory_mb,
            vcpus=vcpus,
            ttl=ttl,
            owner_id=owner_id,
            metadata=metadata,
            ports=ports,
        )
        return SpawnAdmissionDecision.from_dict(p.expect_type(self._http.request(call), dict, "a decision"))

    def get(self, sandbox_id: str) -> Sandbox:
        """A live sandbox by id; :class:`SandboxNotFound` if unknown or destroyed."""
        data = sandbox_data(self._http.request(p.get_call(sandbox_id)))
        return Sandbox(self._http, data["id"], info=data)

    def list(self) -> List[SandboxInfo]:
        """Live sandboxes, newest first."""
        return sandbox_list(self._http.request(p.list_call()))

    def prune(self) -> int:
        """Destroys every sandbox past its expiry; returns how many."""
        return pruned(self._http.request(p.prune_call()))

    def spawn_template(
        self,
        template_name: str,
        provider: Optional[str] = None,
        ttl: Any = None,
        owner_id: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> Sandbox:
        """Spawns from a template; same as ``templates.spawn``."""
        return self.templates.spawn(
            template_name, provider=provider, ttl=ttl, owner_id=owner_id, metadata=metadata, env=env
        )

    # -- system ---------------------------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """``{"status": "ok", "version", "uptime"}`` (needs no API key)."""
        return p.expect_type(self._http.request(p.simple_get("/health")), dict, "a health object")

    def ready(self) -> Dict[str, Any]:
        """Readiness: store and provider health. Raises :class:`Unavailable` when not ready."""
        return p.expect_type(self._http.request(p.simple_get("/ready")), dict, "a readiness object")

    def providers(self) -> List[Dict[str, Any]]:
        """Registered providers with their health."""
        return p.expect_type(self._http.request(p.simple_get("/providers")), list, "a list of providers")

    def workers(self) -> List[Dict[str, Any]]:
        """The worker registry (the control plane's own worker is ``local``)."""
        return p.expect_type(self._http.request(p.simple_get("/workers")), list, "a list of workers")

    def pool_status(self) -> Dict[str, Any]:
        """VM pool status. NOTE: this server has no pool routes: raises :class:`NotFound`."""
        return p.expect_type(self._http.request(p.simple_get("/pool/status")), dict, "a pool status object")

    def quota_summary(self) -> QuotaSummary:
        """Quota coverage. NOTE: this server has no quota routes: raises :class:`NotFound`."""
        data = p.expect_type(self._http.request(p.simple_get("/quotas/summary")), dict, "a quota summary")
        return QuotaSummary.from_dict(data)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the pooled connections. Open exec streams are not affected."""
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"
