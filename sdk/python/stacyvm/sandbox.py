"""A sandbox handle (blocking client)."""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

from stacyvm import _protocol as p
from stacyvm.exceptions import NotFound
from stacyvm.models import ExecResult
from stacyvm.streaming import ExecStream

if TYPE_CHECKING:  # pragma: no cover
    from stacyvm._sync_http import SyncTransport

Duration = Union[str, int, float, datetime.timedelta]
FileMode = Union[str, int]

__all__ = ["Sandbox", "SandboxFields"]


class SandboxFields:
    """Read-only view of the sandbox object last received from the server.

    ``info`` is the raw object; the properties below read its fields (``None``
    or a neutral default for fields the server omitted).
    """

    id: str
    _info: Dict[str, Any]

    @property
    def info(self) -> Dict[str, Any]:
        """The sandbox object as last received (``refresh()`` updates it)."""
        return self._info

    @property
    def raw(self) -> Dict[str, Any]:
        """Same as :attr:`info` (the name ``SandboxInfo`` uses)."""
        return self._info

    def _str(self, key: str, default: str = "") -> str:
        v = self._info.get(key)
        return v if isinstance(v, str) else default

    def _opt_str(self, key: str) -> Optional[str]:
        v = self._info.get(key)
        return v if isinstance(v, str) else None

    def _opt_int(self, key: str) -> Optional[int]:
        v = self._info.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    @property
    def state(self) -> str:
        return self._str("state", "unknown")

    @property
    def provider(self) -> str:
        return self._str("provider")

    @property
    def image(self) -> str:
        return self._str("image")

    @property
    def memory_mb(self) -> Optional[int]:
        return self._opt_int("memory_mb")

    @property
    def vcpus(self) -> Optional[int]:
        return self._opt_int("vcpus")

    @property
    def owner_id(self) -> Optional[str]:
        return self._opt_str("owner_id")

    @property
    def tenant_id(self) -> Optional[str]:
        return self._opt_str("tenant_id")

    @property
    def worker_id(self) -> Optional[str]:
        return self._opt_str("worker_id")

    @property
    def vm_id(self) -> Optional[str]:
        return self._opt_str("vm_id")

    @property
    def created_at(self) -> Optional[str]:
        return self._opt_str("created_at")

    @property
    def updated_at(self) -> Optional[str]:
        return self._opt_str("updated_at")

    @property
    def expires_at(self) -> Optional[str]:
        return self._opt_str("expires_at")

    @property
    def metadata(self) -> Dict[str, str]:
        md = self._info.get("metadata")
        return dict(md) if isinstance(md, dict) else {}

    @property
    def ports(self) -> List[int]:
        ports = self._info.get("ports")
        return list(ports) if isinstance(ports, list) else []

    @property
    def preview_domain(self) -> str:
        return self._str("preview_domain") or "localhost"

    @property
    def preview_scheme(self) -> str:
        """``http`` or ``https`` (``http`` when the server does not say)."""
        return self._str("preview_scheme") or "http"

    @property
    def preview_port(self) -> Optional[int]:
        """Port of the preview gateway, when the server sends one (not 80/443)."""
        return self._opt_int("preview_port")

    def get_preview_url(self, port: int) -> str:
        """The URL that reaches ``port`` inside this sandbox through the preview
        gateway: ``http://{port}-{id}.{preview_domain}``. Built locally from the
        sandbox object; when the server also sends ``preview_scheme`` and
        ``preview_port``, they are used: ``{scheme}://{port}-{id}.{domain}[:{preview_port}]``."""
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"port must be an integer from 1 to 65535, got {port!r}")
        gateway = self.preview_port
        suffix = f":{gateway}" if gateway is not None else ""
        return f"{self.preview_scheme}://{port}-{self.id}.{self.preview_domain}{suffix}"

    def _set_info(self, data: Any) -> None:
        if isinstance(data, dict):
            self._info = data
            if isinstance(data.get("id"), str):
                self.id = data["id"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, state={self.state!r})"


def _exec_result(data: Any) -> ExecResult:
    p.expect_type(data, dict, "an exec result object")
    code = data.get("exit_code")
    if not isinstance(code, int) or isinstance(code, bool):
        p.expect_type(None, int, "an integer exit_code")
    return ExecResult(
        exit_code=code,
        stdout=data.get("stdout", "") if isinstance(data.get("stdout"), str) else "",
        stderr=data.get("stderr", "") if isinstance(data.get("stderr"), str) else "",
        duration=data.get("duration", "") if isinstance(data.get("duration"), str) else "",
    )


class Sandbox(SandboxFields):
    """A sandbox on the server. Obtain one from :meth:`Client.spawn` or :meth:`Client.get`.

    As a context manager it always destroys the sandbox on exit (an already
    destroyed sandbox is fine)::

        with client.spawn() as sb:
            print(sb.exec("echo hi").stdout)
    """

    def __init__(self, http: "SyncTransport", sandbox_id: str, info: Optional[Dict[str, Any]] = None) -> None:
        self._http = http
        self.id = sandbox_id
        self._info = dict(info) if info else {"id": sandbox_id}

    # -- exec ---------------------------------------------------------------------------

    def exec(
        self,
        command: str,
        args: Optional[List[str]] = None,
        env: Optional[Dict[str, str]] = None,
        workdir: Optional[str] = None,
        timeout: Optional[Duration] = None,
        mode: Optional[str] = None,
    ) -> ExecResult:
        """Runs ``command`` and waits for it. ``timeout`` is the exec deadline (Go
        duration string, seconds, or timedelta); past it the server kills the
        command and this raises :class:`Timeout`. ``mode`` is ``"shell"`` (the
        default: ``sh -c``, ``args`` appended quoted) or ``"argv"``."""
        return _exec_result(self._http.request(p.exec_call(self.id, command, args, env, workdir, timeout, mode)))

    def exec_stream(
        self,
        command: str,
        args: Optional[List[str]] = None,
        env: Optional[Dict[str, str]] = None,
        workdir: Optional[str] = None,
        timeout: Optional[Duration] = None,
        mode: Optional[str] = None,
    ) -> ExecStream:
        """Runs ``command`` and returns an iterator of :class:`StreamChunk` as output
        arrives; the last chunk has ``stream == "exit"`` and ``exit_code``. Errors
        found before the command starts are raised here. Closing the iterator
        early kills the command."""
        call = p.exec_call(self.id, command, args, env, workdir, timeout, mode, stream=True)
        return ExecStream(self._http.open_stream(call), self.id)

    # -- files ----------------------------------------------------------------------------

    def write_file(self, path: str, content: Union[str, bytes, Any], mode: Optional[FileMode] = None) -> None:
        """Writes a file (parents are created). ``str`` is written as UTF-8 via the
        JSON route; ``bytes`` or a binary file object is uploaded raw and byte
        exact (streamed, any size). ``mode`` is an octal string (``"0755"``) or
        an int permission value (``0o755``); default ``0644``."""
        self._http.request(p.write_file_call(self.id, path, content, mode))

    def read_file(self, path: str) -> str:
        """Reads a file as text (UTF-8; invalid bytes become U+FFFD). Use
        :meth:`read_file_bytes` for binary files."""
        return self.read_file_bytes(path).decode("utf-8", errors="replace")

    def read_file_bytes(self, path: str) -> bytes:
        """Reads a file's exact bytes."""
        return p.expect_type(self._http.request(p.read_file_call(self.id, path)), bytes, "file bytes")

    def list_files(self, path: str = "/") -> List[Dict[str, Any]]:
        """Entries of a directory: ``[{"path","name","size","mode","is_dir","mod_time"}]``."""
        return p.expect_type(self._http.request(p.list_files_call(self.id, path)), list, "a list of files")

    def delete_file(self, path: str, recursive: bool = False) -> None:
        """Deletes a file, or a directory (non-empty ones need ``recursive=True``)."""
        self._http.request(p.delete_file_call(self.id, path, recursive))

    def move_file(self, old_path: str, new_path: str) -> None:
        """Moves/renames a file or directory (destination parents are created)."""
        self._http.request(p.move_file_call(self.id, old_path, new_path))

    def chmod_file(self, path: str, mode: FileMode) -> None:
        """Sets permissions: ``"0755"`` or ``0o755``."""
        self._http.request(p.chmod_file_call(self.id, path, mode))

    def stat_file(self, path: str) -> Dict[str, Any]:
        """``{"path","name","size","mode","is_dir","mod_time"}`` of one path."""
        return p.expect_type(self._http.request(p.stat_file_call(self.id, path)), dict, "a file info object")

    def glob_files(self, pattern: str) -> List[str]:
        """Sorted paths matching ``pattern`` (``*``, ``?``, ``**``, ``[...]``)."""
        return p.expect_type(self._http.request(p.glob_files_call(self.id, pattern)), list, "a list of paths")

    # -- lifecycle ----------------------------------------------------------------------

    def extend_ttl(self, ttl: Duration = "30m") -> "Sandbox":
        """Sets the expiry to now + ``ttl`` (bounded by the server's ``max_ttl``)."""
        self._set_info(p.expect_type(self._http.request(p.extend_call(self.id, ttl)), dict, "a sandbox object"))
        return self

    def refresh(self) -> "Sandbox":
        """Reloads the sandbox object from the server."""
        self._set_info(p.expect_type(self._http.request(p.get_call(self.id)), dict, "a sandbox object"))
        return self

    def destroy(self) -> None:
        """Destroys the sandbox. A second destroy raises :class:`SandboxNotFound`."""
        self._http.request(p.destroy_call(self.id))
        self._info = dict(self._info, state="destroyed")

    def logs(self, lines: int = 100) -> List[str]:
        """The last ``lines`` console lines (1-10000)."""
        return p.expect_type(self._http.request(p.logs_call(self.id, lines)), list, "a list of log lines")

    def stats(self) -> Dict[str, Any]:
        """Live resource use: ``{"supported": False}`` or cpu/memory figures."""
        return p.expect_type(self._http.request(p.stats_call(self.id)), dict, "a stats object")

    def exec_history(self, limit: int = 50) -> List[Dict[str, Any]]:
        """The sandbox's exec log, newest first (``GET .../execs``)."""
        return p.expect_type(self._http.request(p.execs_call(self.id, limit)), list, "a list of exec records")

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.destroy()
        except NotFound:
            pass  # already gone
        except Exception:
            if exc_type is None:
                raise  # the sandbox may still exist: say so
            # Do not hide the error that ended the block.
