"""The asyncio client against a real `stacyvm serve` (mock provider)."""

from __future__ import annotations

import asyncio
import io
import time
import unittest
from typing import List, Optional

import stacyvm
from stacyvm import (
    AsyncClient,
    AsyncSandbox,
    BadRequest,
    FileNotFound,
    NotFound,
    ResourceLimit,
    SandboxNotFound,
    Timeout,
    Unauthorized,
)
from tests.support import (
    API_KEY,
    PREVIEW_DOMAIN,
    ServerProcess,
    watchdog_start,
    watchdog_stop,
)

SERVER: Optional[ServerProcess] = None
STEP = 20.0  # bound on any single awaited step


def setUpModule() -> None:
    global SERVER
    watchdog_start()
    SERVER = ServerProcess().start()


def tearDownModule() -> None:
    global SERVER
    if SERVER is not None:
        SERVER.stop()
        SERVER = None
    watchdog_stop()


def url() -> str:
    assert SERVER is not None
    return SERVER.url


class AsyncTests(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.client = AsyncClient(url(), api_key=API_KEY, timeout=15.0)

    async def asyncTearDown(self) -> None:
        await self.client.close()

    async def test_basic_flow(self) -> None:
        health = await asyncio.wait_for(self.client.health(), STEP)
        self.assertEqual(health["status"], "ok")
        self.assertEqual([p["name"] for p in await self.client.providers()], ["mock"])
        self.assertIn("local", [w["id"] for w in await self.client.workers()])
        self.assertTrue((await self.client.admission(ttl="5m")).allowed)
        self.assertTrue((await self.client.ready())["status"] == "ready")

        sb = await asyncio.wait_for(self.client.spawn(ttl="10m", metadata={"k": "v"}), STEP)
        try:
            self.assertIsInstance(sb, AsyncSandbox)
            self.assertEqual(sb.state, "running")
            self.assertEqual(sb.metadata, {"k": "v"})
            self.assertTrue(sb.get_preview_url(8080).startswith(f"{sb.preview_scheme}://8080-{sb.id}.{PREVIEW_DOMAIN}"))
            self.assertIn(sb.id, [s.id for s in await self.client.list()])
            self.assertEqual((await self.client.get(sb.id)).id, sb.id)

            r = await sb.exec("echo hi; echo err >&2; exit 5")
            self.assertEqual((r.exit_code, r.stdout, r.stderr), (5, "hi\n", "err\n"))

            data = bytes(range(256))
            await sb.write_file("d/all.bin", data, mode="0600")
            self.assertEqual(await sb.read_file_bytes("d/all.bin"), data)
            await sb.write_file("d/stream.bin", io.BytesIO(data * 1000))  # chunked upload
            self.assertEqual(await sb.read_file_bytes("d/stream.bin"), data * 1000)
            await sb.delete_file("d/stream.bin")
            await sb.write_file("d/t.txt", "text ✓")
            self.assertEqual(await sb.read_file("d/t.txt"), "text ✓")
            self.assertEqual((await sb.stat_file("d/all.bin"))["mode"], "0600")
            self.assertEqual(sorted(e["name"] for e in await sb.list_files("d")), ["all.bin", "t.txt"])
            self.assertEqual(await sb.glob_files("d/*.txt"), ["/workspace/d/t.txt"])
            await sb.move_file("d/t.txt", "e/t.txt")
            await sb.chmod_file("e/t.txt", 0o600)
            self.assertEqual((await sb.stat_file("e/t.txt"))["mode"], "0600")
            await sb.delete_file("e", recursive=True)
            with self.assertRaises(FileNotFound):
                await sb.stat_file("e/t.txt")

            before = sb.expires_at
            await sb.extend_ttl("3h")
            self.assertGreater(sb.expires_at, before)
            await sb.refresh()
            self.assertTrue(any("exit=5" in line for line in await sb.logs(20)))
            self.assertEqual(await sb.stats(), {"supported": False})
            self.assertEqual((await sb.exec_history(1))[0]["exit_code"], 5)
        finally:
            await sb.destroy()
        self.assertEqual(sb.state, "destroyed")
        with self.assertRaises(SandboxNotFound):
            await self.client.get(sb.id)
        self.assertGreaterEqual(await self.client.prune(), 0)

    async def test_stream_incremental_and_exit_code(self) -> None:
        async with self.client.spawn() as sb:
            t0 = time.monotonic()
            stream = sb.exec_stream("echo one; sleep 1.2; echo two >&2; exit 4")
            seen: List[stacyvm.StreamChunk] = []
            first_at = None
            async for chunk in stream:
                if first_at is None:
                    first_at = time.monotonic() - t0
                seen.append(chunk)
            self.assertIsNotNone(first_at)
            self.assertLess(first_at or 0, 1.0)
            self.assertEqual([(c.stream, c.data) for c in seen[:-1]], [("stdout", "one\n"), ("stderr", "two\n")])
            self.assertEqual(seen[-1].stream, "exit")
            self.assertEqual(stream.exit_code, 4)

            # A larger stream arrives complete and in order.
            n = 300_000
            parts: List[str] = []
            async with sb.exec_stream(f"seq 1 {n}") as big:
                async for c in big:
                    if c.stream == "stdout":
                        parts.append(c.data)
            self.assertEqual("".join(parts), "".join(f"{i}\n" for i in range(1, n + 1)))
            self.assertEqual(big.exit_code, 0)

    async def test_stream_not_cut_by_client_timeout_and_awaitable(self) -> None:
        async with AsyncClient(url(), api_key=API_KEY, timeout=0.5) as short:
            async with short.spawn() as sb:
                stream = await sb.exec_stream("sleep 1.2; echo late")
                self.assertEqual(await asyncio.wait_for(stream.wait(), STEP), 0)
                r = await sb.exec("sleep 1; echo ok", timeout="10s")
                self.assertEqual(r.stdout, "ok\n")

    async def test_closing_a_stream_kills_the_command(self) -> None:
        async with self.client.spawn() as sb:
            self.assertEqual(await sb.exec_stream("sleep 0.2; touch control").wait(), 0)
            await sb.stat_file("control")
            stream = sb.exec_stream("echo started; sleep 1.5; touch marker")
            first = await asyncio.wait_for(stream.__anext__(), STEP)
            self.assertEqual(first.data, "started\n")
            await stream.aclose()
            self.assertEqual([c async for c in stream], [])
            await asyncio.sleep(2.5)
            with self.assertRaises(FileNotFound):
                await sb.stat_file("marker")

    async def test_cancelling_the_reading_task_kills_the_command(self) -> None:
        async with self.client.spawn() as sb:
            stream = sb.exec_stream("echo started; sleep 1.5; touch marker")

            async def consume() -> None:
                async for _ in stream:
                    pass

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0.5)
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task
            await asyncio.sleep(2.5)
            with self.assertRaises(FileNotFound):
                await sb.stat_file("marker")

    async def test_spawn_context_destroys_even_on_error(self) -> None:
        with self.assertRaises(KeyError):
            async with self.client.spawn() as sb:
                sid = sb.id
                raise KeyError("boom")
        with self.assertRaises(SandboxNotFound):
            await self.client.get(sid)
        sb2 = await self.client.spawn()
        async with sb2:
            pass
        with self.assertRaises(SandboxNotFound):
            await sb2.refresh()

    async def test_errors(self) -> None:
        async with AsyncClient(url(), api_key="nope") as bad:
            with self.assertRaises(Unauthorized) as ctx:
                await bad.list()
            self.assertTrue(ctx.exception.request_id)
        with self.assertRaises(SandboxNotFound):
            await self.client.get("sb-00000000")
        with self.assertRaises(SandboxNotFound):
            await AsyncSandbox(self.client._http, "sb-00000000").exec_stream("true")
        with self.assertRaises(BadRequest):
            await self.client.spawn(vcpus=0)
        with self.assertRaises(ResourceLimit):
            await self.client.spawn(ttl="30h")
        with self.assertRaises(NotFound):
            await self.client.pool_status()
        with self.assertRaises(NotFound):
            await self.client.quota_summary()
        with self.assertRaises(NotFound):
            await self.client.templates.get("no-such-template")
        with self.assertRaises(NotFound):
            await self.client.spawn_template("no-such-template")
        async with self.client.spawn() as sb:
            with self.assertRaises(Timeout):
                await sb.exec("sleep 3", timeout="200ms")

    async def test_templates_round_trip(self) -> None:
        name = f"py-async-{int(time.time() * 1000) % 10**8}"
        tpl = stacyvm.Template(
            name,
            "alpine:3.20",
            ttl_seconds=300,
            env={"WHO": "async"},
            setup=["echo \"$WHO\" > who.txt"],
        )
        created = await asyncio.wait_for(self.client.templates.create(tpl), STEP)
        try:
            self.assertEqual((created.version, created.ttl_seconds, created.setup), (1, 300, tpl.setup))
            self.assertIn(name, [t.name for t in await self.client.templates.list()])
            sb = await asyncio.wait_for(self.client.templates.spawn(name, env={"EXTRA": "x"}), STEP)
            try:
                self.assertIsInstance(sb, AsyncSandbox)
                self.assertEqual(sb.metadata, {"template": name})
                self.assertEqual(await sb.read_file("/workspace/who.txt"), "async\n")
                self.assertEqual((await sb.exec('echo "$WHO $EXTRA"')).stdout, "async x\n")
            finally:
                await sb.destroy()
            created.setup = ["sleep 0; exit 2"]
            self.assertEqual((await self.client.templates.update(created)).version, 2)
            with self.assertRaises(BadRequest):
                await self.client.templates.spawn(name)
        finally:
            await self.client.templates.delete(name)
        with self.assertRaises(NotFound):
            await self.client.templates.get(name)

    async def test_concurrent_calls_share_the_pool(self) -> None:
        results = await asyncio.wait_for(asyncio.gather(*(self.client.health() for _ in range(20))), STEP)
        self.assertEqual({r["status"] for r in results}, {"ok"})
        self.assertLessEqual(len(self.client._http._idle), 8)


if __name__ == "__main__":
    unittest.main()
