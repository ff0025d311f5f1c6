"""The asyncio client."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, Generator, List, Optional

from stacyvm import _protocol as p
from stacyvm._async_http import AsyncTransport
from stacyvm.async_sandbox import AsyncSandbox
from stacyvm.client import Duration, pruned, sandbox_data, sandbox_list
from stacyvm.models import QuotaSummary, SandboxInfo, SpawnAdmissionDecision
from stacyvm.templates import AsyncTemplateManager

__all__ = ["AsyncClient", "SpawnContext"]


class SpawnContext:
    """What :meth:`AsyncClient.spawn` returns: ``await`` it for the sandbox, or use
    ``async with client.spawn(...) as sb:``, which destroys the sandbox on exit."""

    def __init__(self, factory: Callable[[], Awaitable[AsyncSandbox]]) -> None:
        self._factory = factory
        self._sandbox: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, AsyncSandbox]:
        return self._factory().__await__()

    async def __aenter__(self) -> AsyncSandbox:
        self._sandbox = await self._factory()
        return self._sandbox

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)


class AsyncClient:
    """Asyncio client; the same methods as :class:`stacyvm.Client`, awaitable.

    Built on asyncio streams (no threads): exec streams are read as the bytes
    arrive. Use one client per event loop; ``async with AsyncClient(...) as c:``
    closes its connections at the end.
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
        self._http = AsyncTransport(p.BaseURL(base_url), p.default_headers(api_key, user_id, tenant_id), timeout)
        self.templates = AsyncTemplateManager(self._http)

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
    ) -> SpawnContext:
        """``sb = await client.spawn(...)`` or ``async with client.spawn(...) as sb:``."""
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

        async def run() -> AsyncSandbox:
            data = sandbox_data(await self._http.request(call))
            return AsyncSandbox(self._http, data["id"], info=data)

        return SpawnContext(run)

    async def admission(
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
        return SpawnAdmissionDecision.from_dict(p.expect_type(await self._http.request(call), dict, "a decision"))

    async def get(self, sandbox_id: str) -> AsyncSandbox:
        data = sandbox_data(await self._http.request(p.get_call(sandbox_id)))
        return AsyncSandbox(self._http, data["id"], info=data)

    async def list(self) -> List[SandboxInfo]:
        return sandbox_list(await self._http.request(p.list_call()))

    async def prune(self) -> int:
        return pruned(await self._http.request(p.prune_call()))

    async def spawn_template(
        self,
        template_name: str,
        provider: Optional[str] = None,
        ttl: Any = None,
        owner_id: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> AsyncSandbox:
        """Spawns from a template; same as ``templates.spawn``."""
        return await self.templates.spawn(
            template_name, provider=provider, ttl=ttl, owner_id=owner_id, metadata=metadata, env=env
        )

    async def health(self) -> Dict[str, Any]:
        return p.expect_type(await self._http.request(p.simple_get("/health")), dict, "a health object")

    async def ready(self) -> Dict[str, Any]:
        return p.expect_type(await self._http.request(p.simple_get("/ready")), dict, "a readiness object")

    async def providers(self) -> List[Dict[str, Any]]:
        return p.expect_type(await self._http.request(p.simple_get("/providers")), list, "a list of providers")

    async def workers(self) -> List[Dict[str, Any]]:
        return p.expect_type(await self._http.request(p.simple_get("/workers")), list, "a list of workers")

    async def pool_status(self) -> Dict[str, Any]:
        """NOTE: this server has no pool routes: raises :class:`NotFound`."""
        return p.expect_type(await self._http.request(p.simple_get("/pool/status")), dict, "a pool status object")

    async def quota_summary(self) -> QuotaSummary:
        """NOTE: this server has no quota routes: raises :class:`NotFound`."""
        data = p.expect_type(await self._http.request(p.simple_get("/quotas/summary")), dict, "a quota summary")
        return QuotaSummary.from_dict(data)

    async def close(self) -> None:
        await self._http.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"
