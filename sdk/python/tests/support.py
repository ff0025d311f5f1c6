"""Test helpers: a real `stacyvm serve` process and a scriptable fake HTTP server.

The real server is the built binary (`npm run build` at the repo root), started
with `--port 0` on 127.0.0.1 in a temporary directory, configured through a
STACYVM_CONFIG yaml file: mock provider only, an API key, a 1 MiB JSON body
limit. Its listening address is read from its log.
"""

from __future__ import annotations

import collections
import faulthandler
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Deque, Dict, List, Optional

SDK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(os.path.dirname(SDK_DIR))
# The built server CLI; STACYVM_SDK_TEST_CLI points the tests at another build.
CLI = os.environ.get("STACYVM_SDK_TEST_CLI") or os.path.join(REPO_ROOT, "packages", "server", "dist", "cli", "main.js")

if SDK_DIR not in sys.path:  # run as a plain script too
    sys.path.insert(0, SDK_DIR)

API_KEY = "sdk-test-key-0123456789abcdef0123456789"
PREVIEW_DOMAIN = "preview.test"
MAX_BODY_BYTES = 1024 * 1024

# Any test module that hangs longer than this dumps its stacks and exits.
MODULE_DEADLINE_S = 300.0


def watchdog_start() -> None:
    faulthandler.dump_traceback_later(MODULE_DEADLINE_S, exit=True)


def watchdog_stop() -> None:
    faulthandler.cancel_dump_traceback_later()


def free_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="stacyvm-pysdk-")
        self.url = ""
        self.proc: Optional[subprocess.Popen] = None
        self._log: Deque[str] = collections.deque(maxlen=400)
        self._reader: Optional[threading.Thread] = None

    @property
    def mock_dir(self) -> str:
        return os.path.join(self.dir, "mock")

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH: the SDK tests need the stacyvm server")
        if not os.path.exists(CLI):
            raise RuntimeError(f"{CLI} is missing: run `npm run build` at the repo root first")
        config = os.path.join(self.dir, "stacyvm.yaml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                "server:\n"
                "  host: 127.0.0.1\n"
                f"  preview_domain: {PREVIEW_DOMAIN}\n"
                f"  max_body_bytes: {MAX_BODY_BYTES}\n"
                "providers:\n"
                "  default: mock\n"
                "  docker:\n"
                "    enabled: false\n"
                "  mock:\n"
                "    enabled: true\n"
                f"    base_dir: {self.mock_dir}\n"
                "auth:\n"
                f"  api_key: {API_KEY}\n"
                "database:\n"
                f"  path: {os.path.join(self.dir, 'stacyvm.db')}\n"
                "defaults:\n"
                "  max_ttl: 24h\n"
                "  max_exec_timeout: 2m\n"
                "logging:\n"
                "  level: info\n"
                "  format: json\n"
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("STACYVM_")}
        env["HOME"] = self.dir
        env["STACYVM_CONFIG"] = config
        self.proc = subprocess.Popen(
            [node, CLI, "serve", "--port", "0"],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        found = threading.Event()
        holder: Dict[str, str] = {}

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:  # keeps draining so the server never blocks on its log
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                self._log.append(line)
                if not found.is_set():
                    m = re.search(r'"address":"(http://[^"]+)"', line)
                    if m:
                        holder["url"] = m.group(1)
                        found.set()

        self._reader = threading.Thread(target=pump, name="stacyvm-log", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("stacyvm serve did not start:\n" + self.logs())
        self.url = holder["url"]
        return self

    def logs(self) -> str:
        return "\n".join(self._log)

    def stop(self) -> Optional[int]:
        code: Optional[int] = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    code = self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    code = self.proc.wait(5)
            else:
                code = self.proc.returncode
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


# --- fake server ---------------------------------------------------------------------

Handler = Callable[[BaseHTTPRequestHandler], None]


class FakeServer:
    """A tiny HTTP/1.1 server on 127.0.0.1 whose answers the test scripts per
    (method, path). Counts TCP connections and requests."""

    def __init__(self) -> None:
        routes: Dict[str, Handler] = {}
        self.routes = routes
        self.requests: List[Dict[str, object]] = []
        self.connections = 0
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                fake.connections += 1

            def log_message(self, *args: object) -> None:
                pass

            def _dispatch(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                fake.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                handler = routes.get(f"{self.command} {path}")
                if handler is None:
                    send_json(self, 404, {"code": "NOT_FOUND", "message": f"no route for {self.command} {path}"})
                    return
                handler(self)

            do_GET = do_POST = do_PUT = do_DELETE = _dispatch

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that hang up early are part of the tests

        self.httpd = Quiet(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[f"{method} {path}"] = handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send_raw(
    h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str, extra: Optional[Dict[str, str]] = None
) -> None:
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.send_header("Content-Length", str(len(body)))
    h.send_header("X-Request-ID", "fake-req-1")
    for k, v in (extra or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def send_json(h: BaseHTTPRequestHandler, status: int, obj: object) -> None:
    import json

    send_raw(h, status, json.dumps(obj).encode(), "application/json")


def start_chunked(h: BaseHTTPRequestHandler, content_type: str = "application/x-ndjson") -> None:
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    h.send_header("Transfer-Encoding", "chunked")
    h.send_header("X-Request-ID", "fake-stream-1")
    h.end_headers()
    h.wfile.flush()


def write_chunk(h: BaseHTTPRequestHandler, data: bytes) -> None:
    h.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
    h.wfile.flush()


def end_chunked(h: BaseHTTPRequestHandler) -> None:
    h.wfile.write(b"0\r\n\r\n")
    h.wfile.flush()


def cut_connection(h: BaseHTTPRequestHandler) -> None:
    """Drops the TCP connection mid-response."""
    h.wfile.flush()
    try:
        h.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    h.close_connection = True
