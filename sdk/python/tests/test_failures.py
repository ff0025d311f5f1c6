"""Failure modes against a scripted fake server on 127.0.0.1 (no stacyvm needed):
server down, malformed answers, streams cut mid-way, non-envelope errors,
client timeouts, keep-alive."""

from __future__ import annotations

import asyncio
import json
import time
import unittest
from http.server import BaseHTTPRequestHandler
from typing import List

import stacyvm
from stacyvm import (
    AsyncClient,
    AsyncSandbox,
    Client,
    ClientTimeout,
    ConnectionError,
    InternalError,
    MalformedResponse,
    ProviderError,
    Sandbox,
    StacyVMError,
    StreamInterrupted,
    Unavailable,
)
from tests.support import (
    FakeServer,
    cut_connection,
    end_chunked,
    free_port,
    send_json,
    send_raw,
    start_chunked,
    watchdog_start,
    watchdog_stop,
    write_chunk,
)

SB = "sb-0000abcd"
EXEC = f"/api/v1/sandboxes/{SB}/exec"
FILES = f"/api/v1/sandboxes/{SB}/files"


def setUpModule() -> None:
    watchdog_start()


def tearDownModule() -> None:
    watchdog_stop()


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def stream_then_cut(h: BaseHTTPRequestHandler) -> None:
    start_chunked(h)
    write_chunk(h, line({"stream": "stdout", "data": "one\n"}))
    write_chunk(h, line({"stream": "stderr", "data": "two\n"}) + b'{"stream":"stdout","da')
    time.sleep(0.05)
    cut_connection(h)


def stream_ends_without_exit(h: BaseHTTPRequestHandler) -> None:
    start_chunked(h)
    write_chunk(h, line({"stream": "stdout", "data": "x"}))
    end_chunked(h)


def stream_with_error_line(h: BaseHTTPRequestHandler) -> None:
    start_chunked(h)
    write_chunk(h, line({"stream": "stdout", "data": "partial"}))
    write_chunk(h, line({"stream": "error", "data": "", "code": "UNAVAILABLE", "message": "worker went away"}))
    end_chunked(h)


def stream_with_garbage(h: BaseHTTPRequestHandler) -> None:
    start_chunked(h)
    write_chunk(h, b"this is not json\n")
    end_chunked(h)


def stream_ok_split_lines(h: BaseHTTPRequestHandler) -> None:
    start_chunked(h)
    payload = line({"stream": "stdout", "data": "é ✓"}) + line({"stream": "exit", "data": "", "exit_code": 9})
    for i in range(0, len(payload), 3):  # lines and UTF-8 sequences split across chunks
        write_chunk(h, payload[i : i + 3])
    end_chunked(h)


def not_json(h: BaseHTTPRequestHandler) -> None:
    send_raw(h, 200, b"<html>surprise</html>", "text/html")


def wrong_shape(h: BaseHTTPRequestHandler) -> None:
    send_json(h, 200, {"not": "a list"})


def bad_gateway(h: BaseHTTPRequestHandler) -> None:
    send_raw(h, 502, b"<html>502 Bad Gateway</html>", "text/html")


def internal(h: BaseHTTPRequestHandler) -> None:
    send_json(h, 500, {"code": "INTERNAL_ERROR", "message": "internal error", "request_id": "rid-500"})


def slow(h: BaseHTTPRequestHandler) -> None:
    time.sleep(3)
    send_json(h, 200, {"status": "ok"})


def truncated_file(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Content-Length", "100")
    h.end_headers()
    h.wfile.write(b"x" * 40)
    cut_connection(h)


class FakeServerCase(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeServer()
        self.addCleanup(self.fake.close)
        self.client = Client(self.fake.url, api_key="k", timeout=5)
        self.addCleanup(self.client.close)
        self.sb = Sandbox(self.client._http, SB)


class SyncFailureTests(FakeServerCase):
    def test_server_down_is_a_fast_connection_error(self) -> None:
        port = free_port()
        t0 = time.monotonic()
        with Client(f"http://127.0.0.1:{port}") as c:
            with self.assertRaises(ConnectionError) as ctx:
                c.health()
        self.assertLess(time.monotonic() - t0, 2.0)
        e = ctx.exception
        self.assertIsInstance(e, StacyVMError)
        self.assertIsInstance(e, OSError)  # also the built-in ConnectionError
        self.assertEqual(e.code, "CONNECTION_ERROR")
        self.assertIsNone(e.status)
        self.assertIn(str(port), str(e))
        with self.assertRaises(ConnectionError):
            Client(f"http://127.0.0.1:{port}").spawn()

    def test_malformed_json_answer(self) -> None:
        self.fake.route("GET", "/api/v1/health", not_json)
        with self.assertRaises(MalformedResponse) as ctx:
            self.client.health()
        self.assertEqual(ctx.exception.status, 200)
        self.assertEqual(ctx.exception.request_id, "fake-req-1")

    def test_wrong_shape_answer(self) -> None:
        self.fake.route("GET", "/api/v1/sandboxes", wrong_shape)
        with self.assertRaises(MalformedResponse):
            self.client.list()

    def test_non_envelope_errors_map_by_status(self) -> None:
        self.fake.route("GET", "/api/v1/providers", bad_gateway)
        with self.assertRaises(ProviderError) as ctx:
            self.client.providers()
        self.assertEqual(ctx.exception.status, 502)
        self.assertIn("502 Bad Gateway", str(ctx.exception))
        self.fake.route("GET", "/api/v1/workers", internal)
        with self.assertRaises(InternalError) as ctx2:
            self.client.workers()
        self.assertIsInstance(ctx2.exception, ProviderError)
        self.assertEqual(ctx2.exception.request_id, "rid-500")

    def test_client_timeout(self) -> None:
        self.fake.route("GET", "/api/v1/health", slow)
        t0 = time.monotonic()
        with Client(self.fake.url, timeout=0.5) as c:
            with self.assertRaises(ClientTimeout):
                c.health()
        self.assertLess(time.monotonic() - t0, 2.5)

    def test_stream_cut_mid_way(self) -> None:
        self.fake.route("POST", EXEC, stream_then_cut)
        got: List[stacyvm.StreamChunk] = []
        stream = self.sb.exec_stream("whatever")
        with self.assertRaises(StreamInterrupted) as ctx:
            for c in stream:
                got.append(c)
        self.assertEqual([c.data for c in got], ["one\n", "two\n"])
        self.assertEqual(ctx.exception.chunks, 2)
        self.assertIsNone(stream.exit_code)
        self.assertEqual(ctx.exception.request_id, "fake-stream-1")
        self.assertIsInstance(ctx.exception, ConnectionError)

    def test_stream_ending_without_exit_line(self) -> None:
        self.fake.route("POST", EXEC, stream_ends_without_exit)
        stream = self.sb.exec_stream("x")
        self.assertEqual(next(stream).data, "x")
        with self.assertRaises(StreamInterrupted):
            next(stream)
        with self.assertRaises(StreamInterrupted):
            self.sb.exec_stream("x").wait()

    def test_stream_error_line_raises_its_typed_error(self) -> None:
        self.fake.route("POST", EXEC, stream_with_error_line)
        stream = self.sb.exec_stream("x")
        self.assertEqual(next(stream).data, "partial")
        with self.assertRaises(Unavailable) as ctx:
            next(stream)
        self.assertEqual(str(ctx.exception), "worker went away")
        self.assertEqual(ctx.exception.status, 503)
        self.assertEqual(list(stream), [])

    def test_stream_garbage_is_malformed(self) -> None:
        self.fake.route("POST", EXEC, stream_with_garbage)
        with self.assertRaises(MalformedResponse):
            list(self.sb.exec_stream("x"))

    def test_stream_lines_split_across_chunks(self) -> None:
        self.fake.route("POST", EXEC, stream_ok_split_lines)
        chunks = list(self.sb.exec_stream("x"))
        self.assertEqual([(c.stream, c.data) for c in chunks], [("stdout", "é ✓"), ("exit", "")])
        self.assertEqual(chunks[-1].exit_code, 9)
        sent = json.loads(self.fake.requests[-1]["body"])  # type: ignore[arg-type]
        self.assertEqual(sent, {"command": "x", "stream": True})

    def test_truncated_body(self) -> None:
        self.fake.route("GET", FILES, truncated_file)
        with self.assertRaises(StreamInterrupted):
            self.sb.read_file_bytes("f")

    def test_keep_alive_and_headers(self) -> None:
        self.fake.route("GET", "/api/v1/health", lambda h: send_json(h, 200, {"status": "ok"}))
        with Client(self.fake.url + "/api/v1/", api_key="key-1", user_id="u-1", tenant_id="t-1") as c:
            for _ in range(5):
                self.assertEqual(c.health(), {"status": "ok"})
        self.assertEqual(self.fake.connections, 1)
        headers = self.fake.requests[-1]["headers"]
        assert isinstance(headers, dict)
        self.assertEqual(headers["X-API-Key"], "key-1")
        self.assertEqual(headers["X-User-ID"], "u-1")
        self.assertEqual(headers["X-Tenant-ID"], "t-1")
        self.assertEqual(self.fake.requests[-1]["path"], "/api/v1/health")

    def test_request_bodies_omit_unset_fields(self) -> None:
        def created(h: BaseHTTPRequestHandler) -> None:
            send_json(h, 201, {"id": SB, "state": "running"})

        self.fake.route("POST", "/api/v1/sandboxes", created)
        self.client.spawn()
        self.client.spawn(
            image="python:3.12-slim",
            provider="mock",
            memory_mb=1024,
            vcpus=2,
            ttl=90,
            owner_id="team-a",
            template="python-dev",
            metadata={"purpose": "parity"},
            ports=[3000, 8080],
        )
        bodies = [json.loads(r["body"]) for r in self.fake.requests]  # type: ignore[arg-type]
        self.assertEqual(bodies[0], {})
        self.assertEqual(
            bodies[1],
            {
                "image": "python:3.12-slim",
                "provider": "mock",
                "memory_mb": 1024,
                "vcpus": 2,
                "ttl": "90s",
                "owner_id": "team-a",
                "template": "python-dev",
                "metadata": {"purpose": "parity"},
                "ports": [3000, 8080],
            },
        )
        self.fake.route("POST", "/api/v1/sandboxes", lambda h: send_json(h, 201, {"state": "running"}))
        with self.assertRaises(MalformedResponse):
            self.client.spawn()


class AsyncFailureTests(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.fake = FakeServer()
        self.client = AsyncClient(self.fake.url, timeout=5)
        self.sb = AsyncSandbox(self.client._http, SB)

    async def asyncTearDown(self) -> None:
        await self.client.close()
        self.fake.close()

    async def test_server_down(self) -> None:
        t0 = time.monotonic()
        async with AsyncClient(f"http://127.0.0.1:{free_port()}") as c:
            with self.assertRaises(ConnectionError):
                await c.health()
        self.assertLess(time.monotonic() - t0, 2.0)

    async def test_malformed_and_status_errors(self) -> None:
        self.fake.route("GET", "/api/v1/health", not_json)
        with self.assertRaises(MalformedResponse):
            await self.client.health()
        self.fake.route("GET", "/api/v1/providers", bad_gateway)
        with self.assertRaises(ProviderError) as ctx:
            await self.client.providers()
        self.assertEqual(ctx.exception.status, 502)

    async def test_client_timeout(self) -> None:
        self.fake.route("GET", "/api/v1/health", slow)
        async with AsyncClient(self.fake.url, timeout=0.5) as c:
            with self.assertRaises(ClientTimeout):
                await asyncio.wait_for(c.health(), 5)

    async def test_stream_cut_mid_way(self) -> None:
        self.fake.route("POST", EXEC, stream_then_cut)
        got: List[str] = []
        with self.assertRaises(StreamInterrupted) as ctx:
            async for c in self.sb.exec_stream("x"):
                got.append(c.data)
        self.assertEqual(got, ["one\n", "two\n"])
        self.assertEqual(ctx.exception.chunks, 2)

    async def test_stream_error_line_and_split_lines(self) -> None:
        self.fake.route("POST", EXEC, stream_with_error_line)
        with self.assertRaises(Unavailable):
            await self.sb.exec_stream("x").wait()
        self.fake.route("POST", EXEC, stream_ok_split_lines)
        chunks = [c async for c in self.sb.exec_stream("x")]
        self.assertEqual([c.data for c in chunks], ["é ✓", ""])
        self.assertEqual(chunks[-1].exit_code, 9)
        self.fake.route("POST", EXEC, stream_ends_without_exit)
        with self.assertRaises(StreamInterrupted):
            await self.sb.exec_stream("x").wait()

    async def test_truncated_body_and_keep_alive(self) -> None:
        self.fake.route("GET", FILES, truncated_file)
        with self.assertRaises(StreamInterrupted):
            await self.sb.read_file_bytes("f")
        self.fake.route("GET", "/api/v1/health", lambda h: send_json(h, 200, {"status": "ok"}))
        before = self.fake.connections
        for _ in range(5):
            await self.client.health()
        self.assertEqual(self.fake.connections - before, 1)

    async def test_raw_upload_sends_exact_bytes(self) -> None:
        self.fake.route("PUT", FILES, lambda h: send_json(h, 200, {"status": "written"}))
        await self.sb.write_file("f.bin", b"\x00\x01\xff", mode=0o640)
        req = self.fake.requests[-1]
        self.assertEqual(req["body"], b"\x00\x01\xff")
        self.assertEqual(req["path"], f"{FILES}?path=f.bin&mode=0640")
        headers = req["headers"]
        assert isinstance(headers, dict)
        self.assertEqual(headers["Content-Type"], "application/octet-stream")


if __name__ == "__main__":
    unittest.main()
