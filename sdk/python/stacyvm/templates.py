"""Templates (``/api/v1/templates``), with the server's field names.

NOTE: the StacyVM server does not implement templates yet. Every call here
raises :class:`stacyvm.NotFound` (``no route for ...``) until it does; the
methods are kept so code written for the Go original keeps its shape.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

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


class TemplateManager:
    """``client.templates``: list, get, save (create), update, delete, spawn."""

    def __init__(self, http: "SyncTransport") -> None:
        self._http = http

    def list(self) -> List[Template]:
        return _templates(self._http.request(p.template_list_call()))

    def get(self, name: str) -> Template:
        return _template(self._http.request(p.template_get_call(name)))

    def save(self, template: Template) -> Template:
        """Creates a template (``POST /templates``; 409 if the name exists)."""
        return _template(self._http.request(p.template_save_call(template.to_dict())))

    def update(self, template: Template) -> Template:
        """Replaces a template (``PUT /templates/{name}``)."""
        return _template(self._http.request(p.template_update_call(template.name, template.to_dict())))

    def delete(self, name: str) -> None:
        self._http.request(p.template_delete_call(name))

    def spawn(self, name: str, provider: Optional[str] = None, ttl: Any = None) -> "Sandbox":
        from stacyvm.sandbox import Sandbox

        data = p.expect_type(self._http.request(p.template_spawn_call(name, provider, ttl)), dict, "a sandbox object")
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

    async def update(self, template: Template) -> Template:
        return _template(await self._http.request(p.template_update_call(template.name, template.to_dict())))

    async def delete(self, name: str) -> None:
        await self._http.request(p.template_delete_call(name))

    async def spawn(self, name: str, provider: Optional[str] = None, ttl: Any = None) -> "AsyncSandbox":
        from stacyvm.async_sandbox import AsyncSandbox

        data = p.expect_type(
            await self._http.request(p.template_spawn_call(name, provider, ttl)), dict, "a sandbox object"
        )
        return AsyncSandbox(self._http, data.get("id", ""), info=data)
