"""Templates (``/api/v1/templates``), with the server's field names.

A template is a named sandbox blueprint. A spawn from it applies every field:
image, provider, memory, vCPUs, TTL, ports, metadata (plus
``template: <name>``), ``env`` as the default environment of every exec, and
the ``setup`` commands, run in order before the spawn answers. A failing setup
command fails the spawn (:class:`stacyvm.BadRequest` naming the command, its
exit code and output; :class:`stacyvm.Timeout` when it ran out of time) and the
sandbox is destroyed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from stacyvm import _protocol as p
from stacyvm.models import Template

if TYPE_CHECKING:  # pragma: no cover
    from stacyvm._async_http import AsyncTransport
    from stacyvm._sync_http import SyncTransport
    from stacyvm.async_sandbox import AsyncSandbox
    from stacyvm.sandbox import Sandbox

__all__ = ["TemplateManager", "AsyncTemplateManager", "Template"]


def _templates(data: Any) -> List[Template]:
    return [Template.from_dict(t) for t in p.expect_type(data, list, "a list of templates") if isinstance(t, dict)]


def _template(data: Any) -> Template:
    return Template.from_dict(p.expect_type(data, dict, "a template object"))


def _spawn_call(
    name: str,
    provider: Optional[str],
    ttl: Any,
    owner_id: Optional[str],
    metadata: Optional[Dict[str, str]],
    env: Optional[Dict[str, str]],
) -> p.Call:
    return p.template_spawn_call(name, provider=provider, ttl=ttl, owner_id=owner_id, metadata=metadata, env=env)


class TemplateManager:
    """``client.templates``: list, get, save (alias create), update, delete, spawn."""

    def __init__(self, http: "SyncTransport") -> None:
        self._http = http

    def list(self) -> List[Template]:
        """Every template, ordered by name."""
        return _templates(self._http.request(p.template_list_call()))

    def get(self, name: str) -> Template:
        """A template; :class:`stacyvm.NotFound` when there is none by that name."""
        return _template(self._http.request(p.template_get_call(name)))

    def save(self, template: Template) -> Template:
        """Creates a template (``POST /templates``): :class:`stacyvm.Conflict` if the
        name exists, :class:`stacyvm.BadRequest` naming a bad field."""
        return _template(self._http.request(p.template_save_call(template.to_dict())))

    def create(self, template: Template) -> Template:
        """Same as :meth:`save`."""
        return self.save(template)

    def update(self, template: Template) -> Template:
        """Replaces the template named ``template.name`` (``PUT /templates/{name}``):
        fields left ``None`` or empty take their defaults; ``version`` grows by one."""
        return _template(self._http.request(p.template_update_call(template.name, template.to_dict())))

    def delete(self, name: str) -> None:
        """Deletes a template; sandboxes spawned from it are not touched."""
        self._http.request(p.template_delete_call(name))

    def spawn(
        self,
        name: str,
        provider: Optional[str] = None,
        ttl: Any = None,
        owner_id: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> "Sandbox":
        """Spawns a sandbox from a template and runs its setup commands. ``ttl``
        replaces the template's; ``metadata`` and ``env`` are merged over it."""
        from stacyvm.sandbox import Sandbox

        call = _spawn_call(name, provider, ttl, owner_id, metadata, env)
        data = p.expect_type(self._http.request(call), dict, "a sandbox object")
        return Sandbox(self._http, data.get("id", ""), info=data)


class AsyncTemplateManager:
    """``async_client.templates``: the async twin of :class:`TemplateManager`."""

    def __init__(self, http: "AsyncTransport") -> None:
        self._http = http

    async def list(self) -> List[Template]:
        return _templates(await self._http.request(p.template_list_call()))

    async def get(self, name: str) -> Template:
        return _template(await self._http.request(p.template_get_call(name)))

    async def save(self, template: Template) -> Template:
        return _template(await self._http.request(p.template_save_call(template.to_dict())))

    async def create(self, template: Template) -> Template:
        return await self.save(template)

    async def update(self, template: Template) -> Template:
        return _template(await self._http.request(p.template_update_call(template.name, template.to_dict())))

    async def delete(self, name: str) -> None:
        await self._http.request(p.template_delete_call(name))

    async def spawn(
        self,
        name: str,
        provider: Optional[str] = None,
        ttl: Any = None,
        owner_id: Optional[str] = None,
        metadata: Optional[Dict[str, str]] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> "AsyncSandbox":
        from stacyvm.async_sandbox import AsyncSandbox

        call = _spawn_call(name, provider, ttl, owner_id, metadata, env)
        data = p.expect_type(await self._http.request(call), dict, "a sandbox object")
        return AsyncSandbox(self._http, data.get("id", ""), info=data)
