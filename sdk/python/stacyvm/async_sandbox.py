"""A sandbox handle (asyncio client)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

from stacyvm import _protocol as p
from stacyvm.exceptions import NotFound
from stacyvm.models import ExecResult
from stacyvm.sandbox import Duration, FileMode, SandboxFields, _exec_result
from stacyvm.streaming import AsyncExecStream

if TYPE_CHECKING:  # pragma: no cover
    from stacyvm._async_http import AsyncTransport

__all__ = ["AsyncSandbox"]


class AsyncSandbox(SandboxFields):
    """The async twin of :class:`stacyvm.Sandbox`: same attributes, awaitable methods.

    ``async with sandbox:`` always destroys it on exit.
    """

    def __init__(self, http: "AsyncTransport", sandbox_id: str, info: Optional[Dict[str, Any]] = None) -> None:
        self._http = http
        self.id = sandbox_id
        self._info = dict(info) if info else {"id": sandbox_id}

    async def exec(
        self,
        command: str,
        args: Optional[List[str]] = None,
        env: Optional[Dict[str, str]] = None,
        workdir: Optional[str] = None,
        timeout: Optional[Duration] = None,
        mode: Optional[str] = None,
    ) -> ExecResult:
        return _exec_result(await self._http.request(p.exec_call(self.id, command, args, env, workdir, timeout, mode)))

    def exec_stream(
        self,
        command: str,
        args: Optional[List[str]] = None,
        env: Optional[Dict[str, str]] = None,
        workdir: Optional[str] = None,
        timeout: Optional[Duration] = None,
        mode: Optional[str] = None,
    ) -> AsyncExecStream:
        """Not a coroutine: returns an :class:`AsyncExecStream` to use with
        ``async for``, ``async with`` or ``await`` (which sends the request)."""
        call = p.exec_call(self.id, command, args, env, workdir, timeout, mode, stream=True)
        return AsyncExecStream(lambda: self._http.open_stream(call), self.id)

    async def write_file(self, path: str, content: Union[str, bytes, Any], mode: Optional[FileMode] = None) -> None:
        await self._http.request(p.write_file_call(self.id, path, content, mode))

    async def read_file(self, path: str) -> str:
        return (await self.read_file_bytes(path)).decode("utf-8", errors="replace")

    async def read_file_bytes(self, path: str) -> bytes:
        return p.expect_type(await self._http.request(p.read_file_call(self.id, path)), bytes, "file bytes")

    async def list_files(self, path: str = "/") -> List[Dict[str, Any]]:
        return p.expect_type(await self._http.request(p.list_files_call(self.id, path)), list, "a list of files")

    async def delete_file(self, path: str, recursive: bool = False) -> None:
        await self._http.request(p.delete_file_call(self.id, path, recursive))

    async def move_file(self, old_path: str, new_path: str) -> None:
        await self._http.request(p.move_file_call(self.id, old_path, new_path))

    async def chmod_file(self, path: str, mode: FileMode) -> None:
        await self._http.request(p.chmod_file_call(self.id, path, mode))

    async def stat_file(self, path: str) -> Dict[str, Any]:
        return p.expect_type(await self._http.request(p.stat_file_call(self.id, path)), dict, "a file info object")

    async def glob_files(self, pattern: str) -> List[str]:
        return p.expect_type(await self._http.request(p.glob_files_call(self.id, pattern)), list, "a list of paths")

    async def extend_ttl(self, ttl: Duration = "30m") -> "AsyncSandbox":
        self._set_info(p.expect_type(await self._http.request(p.extend_call(self.id, ttl)), dict, "a sandbox object"))
        return self

    async def refresh(self) -> "AsyncSandbox":
        self._set_info(p.expect_type(await self._http.request(p.get_call(self.id)), dict, "a sandbox object"))
        return self

    async def destroy(self) -> None:
        await self._http.request(p.destroy_call(self.id))
        self._info = dict(self._info, state="destroyed")

    async def logs(self, lines: int = 100) -> List[str]:
        return p.expect_type(await self._http.request(p.logs_call(self.id, lines)), list, "a list of log lines")

    async def stats(self) -> Dict[str, Any]:
        return p.expect_type(await self._http.request(p.stats_call(self.id)), dict, "a stats object")

    async def exec_history(self, limit: int = 50) -> List[Dict[str, Any]]:
        return p.expect_type(await self._http.request(p.execs_call(self.id, limit)), list, "a list of exec records")

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            await self.destroy()
        except NotFound:
            pass
        except Exception:
            if exc_type is None:
                raise
