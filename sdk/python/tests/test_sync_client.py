"""The blocking client against a real `stacyvm serve` (mock provider)."""

from __future__ import annotations

import os
import time
import unittest
from typing import List, Optional

import stacyvm
from stacyvm import (
    BadRequest,
    Client,
    FileNotFound,
    NotFound,
    PayloadTooLarge,
    ResourceLimit,
    SandboxNotFound,
    StacyVMError,
    Timeout,
    Unauthorized,
)
from tests.support import (
    API_KEY,
    MAX_BODY_BYTES,
    PREVIEW_DOMAIN,
    ServerProcess,
    watchdog_start,
    watchdog_stop,
)

SERVER: Optional[ServerProcess] = None


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


class SyncTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.client = Client(url(), api_key=API_KEY, timeout=15.0)
        self.addCleanup(self.client.close)
        self.spawned: List[stacyvm.Sandbox] = []

        def cleanup() -> None:
            for sb in self.spawned:
                try:
                    sb.destroy()
                except NotFound:
                    pass

        self.addCleanup(cleanup)

    def spawn(self, **kw: object) -> stacyvm.Sandbox:
        sb = self.client.spawn(**kw)  # type: ignore[arg-type]
        self.spawned.append(sb)
        return sb


class SystemTests(SyncTestCase):
    def test_health_needs_no_key(self) -> None:
        with Client(url()) as anonymous:
            h = anonymous.health()
        self.assertEqual(h["status"], "ok")
        self.assertIsInstance(h["version"], str)

    def test_ready(self) -> None:
        r = self.client.ready()
        self.assertEqual(r["status"], "ready")
        self.assertEqual(r["ready_providers"], 1)

    def test_providers_lists_the_mock_provider(self) -> None:
        providers = self.client.providers()
        self.assertEqual([p["name"] for p in providers], ["mock"])
        self.assertTrue(providers[0]["healthy"])
        self.assertTrue(providers[0]["default"])

    def test_workers_lists_the_local_worker(self) -> None:
        workers = self.client.workers()
        local = [w for w in workers if w["id"] == "local"]
        self.assertEqual(len(local), 1)
        self.assertEqual(local[0]["capacity"]["preview_domain"], PREVIEW_DOMAIN)
        self.assertIs(local[0]["stale"], False)

    def test_pool_status_is_not_served(self) -> None:
        with self.assertRaises(NotFound) as ctx:
            self.client.pool_status()
        self.assertNotIsInstance(ctx.exception, SandboxNotFound)
        self.assertEqual(ctx.exception.status, 404)
        self.assertIn("/api/v1/pool/status", ctx.exception.message)

    def test_quota_summary_is_not_served(self) -> None:
        with self.assertRaises(NotFound):
            self.client.quota_summary()

    def test_templates_round_trip(self) -> None:
        name = f"py-sync-{int(time.time() * 1000) % 10**8}"
        tpl = stacyvm.Template(
            name,
            "python:3.12-slim",
            256,
            2,
            "10m",
            provider="mock",
            metadata={"team": "py"},
            description="Python SDK round trip",
            env={"GREETING": "hello from template", "SHARED": "template"},
            # Relative path: the mock provider runs commands in the sandbox's workspace on the host.
            setup=['echo "$GREETING" > setup.txt', "echo second >> setup.txt"],
            ports=[3000, 8080],
        )
        self.assertEqual((tpl.ttl_seconds, tpl.vcpus), (600, 2))
        created = self.client.templates.save(tpl)
        self.addCleanup(self._delete_template, name)
        self.assertEqual(created.name, name)
        self.assertEqual(created.version, 1)
        self.assertEqual((created.memory_mb, created.cpu_cores, created.ttl_seconds), (256, 2, 600))
        self.assertEqual(created.env, tpl.env)
        self.assertEqual(created.setup, tpl.setup)
        self.assertEqual(created.ports, [3000, 8080])
        self.assertTrue(created.created_at)
        self.assertEqual(self.client.templates.get(name), created)
        self.assertIn(name, [t.name for t in self.client.templates.list()])
        with self.assertRaises(stacyvm.Conflict):
            self.client.templates.create(tpl)

        sb = self.client.templates.spawn(name, ttl="5m", metadata={"run": "1"})
        self.spawned.append(sb)
        self.assertEqual(sb.state, "running")
        self.assertEqual(sb.metadata, {"team": "py", "run": "1", "template": name})
        self.assertEqual(sb.info["memory_mb"], 256)
        self.assertEqual(sb.info["vcpus"], 2)
        self.assertEqual(sb.read_file("/workspace/setup.txt"), "hello from template\nsecond\n")
        self.assertEqual(sb.exec('echo "$GREETING / $SHARED"').stdout, "hello from template / template\n")
        self.assertEqual(sb.exec('echo "$SHARED"', env={"SHARED": "request"}).stdout, "request\n")
        sb.destroy()

        created.setup = ["echo broken >&2; exit 4"]
        updated = self.client.templates.update(created)
        self.assertEqual(updated.version, 2)
        live = len(self.client.list())
        with self.assertRaises(BadRequest) as ctx:
            self.client.spawn_template(name)
        self.assertIn("setup command 1 of 1", ctx.exception.message)
        self.assertIn("exited with code 4: broken", ctx.exception.message)
        self.assertEqual(len(self.client.list()), live)

        with self.assertRaises(BadRequest):
            self.client.templates.save(stacyvm.Template("Bad Name", "alpine"))
        self.client.templates.delete(name)
        with self.assertRaises(NotFound) as nf:
            self.client.templates.get(name)
        self.assertNotIsInstance(nf.exception, SandboxNotFound)
        with self.assertRaises(NotFound):
            self.client.templates.spawn(name)

    def _delete_template(self, name: str) -> None:
        try:
            self.client.templates.delete(name)
        except NotFound:
            pass

    def test_keep_alive_reuses_connections(self) -> None:
        for _ in range(5):
            self.client.health()
        self.assertEqual(len(self.client._http._idle), 1)


class SandboxLifecycleTests(SyncTestCase):
    def test_spawn_get_list_refresh_destroy(self) -> None:
        sb = self.spawn(image="alpine:latest", memory_mb=256, vcpus=2, ttl="10m", metadata={"job": "sdk"}, ports=[8080])
        self.assertRegex(sb.id, r"^sb-[0-9a-f]{8}$")
        self.assertEqual(sb.state, "running")
        self.assertEqual((sb.provider, sb.image, sb.memory_mb, sb.vcpus), ("mock", "alpine:latest", 256, 2))
        self.assertEqual(sb.metadata, {"job": "sdk"})
        self.assertEqual(sb.ports, [8080])
        self.assertEqual(sb.worker_id, "local")
        self.assertEqual(sb.preview_domain, PREVIEW_DOMAIN)
        self.assertEqual(sb.info["id"], sb.id)
        self.assertIs(sb.raw, sb.info)
        for field in ("created_at", "updated_at", "expires_at"):
            self.assertTrue(getattr(sb, field))

        got = self.client.get(sb.id)
        self.assertEqual(got.id, sb.id)
        self.assertEqual(got.info["expires_at"], sb.info["expires_at"])

        listed = {s.id: s for s in self.client.list()}
        self.assertIn(sb.id, listed)
        info = listed[sb.id]
        self.assertIsInstance(info, stacyvm.SandboxInfo)
        self.assertEqual((info.memory_mb, info.vcpus, info.preview_domain), (256, 2, PREVIEW_DOMAIN))
        self.assertEqual(info.metadata, {"job": "sdk"})
        self.assertEqual(info.raw["id"], sb.id)

        self.assertIs(sb.refresh(), sb)
        self.assertEqual(sb.state, "running")

        sb.destroy()
        self.assertEqual(sb.state, "destroyed")
        self.assertNotIn(sb.id, [s.id for s in self.client.list()])
        with self.assertRaises(SandboxNotFound) as ctx:
            self.client.get(sb.id)
        self.assertEqual(ctx.exception.sandbox_id, sb.id)
        with self.assertRaises(SandboxNotFound):
            sb.destroy()

    def test_owner_from_user_id_header_and_argument(self) -> None:
        with Client(url(), api_key=API_KEY, user_id="team-a") as c:
            sb = c.spawn(owner_id="ignored")
            self.spawned.append(self.client.get(sb.id))
            self.assertEqual(sb.owner_id, "team-a")
        sb2 = self.spawn(owner_id="team-b")
        self.assertEqual(sb2.owner_id, "team-b")

    def test_extend_ttl_moves_expiry_and_updates_the_object(self) -> None:
        sb = self.spawn(ttl=60)
        before = sb.expires_at
        self.assertIs(sb.extend_ttl("2h"), sb)
        self.assertGreater(sb.expires_at, before)
        with self.assertRaises(ResourceLimit):
            sb.extend_ttl("25h")

    def test_context_manager_always_destroys(self) -> None:
        with self.client.spawn() as sb:
            sid = sb.id
            self.assertEqual(sb.exec("echo in").stdout, "in\n")
        with self.assertRaises(SandboxNotFound):
            self.client.get(sid)

        with self.assertRaises(ZeroDivisionError):
            with self.client.spawn() as sb2:
                sid2 = sb2.id
                raise ZeroDivisionError("boom")
        with self.assertRaises(SandboxNotFound):
            self.client.get(sid2)

        with self.client.spawn() as sb3:
            sb3.destroy()  # already gone on exit: fine

    def test_get_preview_url_uses_preview_domain(self) -> None:
        sb = self.spawn()
        gateway = f":{sb.preview_port}" if sb.preview_port is not None else ""
        self.assertEqual(sb.get_preview_url(3000), f"{sb.preview_scheme}://3000-{sb.id}.{PREVIEW_DOMAIN}{gateway}")
        with self.assertRaises(ValueError):
            sb.get_preview_url(0)

    def test_admission_and_prune(self) -> None:
        ok = self.client.admission(ttl="1h", owner_id="team-z")
        self.assertTrue(ok.allowed)
        self.assertEqual(ok.selected_worker_id, "local")
        self.assertIn("local", ok.eligible_workers)
        self.assertIn("worker_reason", ok.raw)
        denied = self.client.admission(ttl="48h")
        self.assertFalse(denied.allowed)
        self.assertEqual(denied.reason, "max_ttl")
        before = len(self.client.list())
        self.assertEqual(len(self.client.list()), before)  # admission created nothing

        sb = self.spawn(ttl="1s")
        time.sleep(1.3)
        self.assertGreaterEqual(self.client.prune(), 1)
        with self.assertRaises(SandboxNotFound):
            sb.refresh()

    def test_logs_stats_and_exec_history(self) -> None:
        sb = self.spawn()
        sb.exec("exit 7")
        lines = sb.logs(50)
        self.assertTrue(any("exit=7" in line for line in lines), lines)
        self.assertEqual(len(sb.logs(1)), 1)
        with self.assertRaises(BadRequest):
            sb.logs(0)
        self.assertEqual(sb.stats(), {"supported": False})
        history = sb.exec_history(5)
        self.assertEqual(history[0]["exit_code"], 7)


class ExecTests(SyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.sb = self.spawn()

    def test_exec_result(self) -> None:
        r = self.sb.exec("echo out; echo err >&2; exit 42")
        self.assertEqual((r.exit_code, r.stdout, r.stderr), (42, "out\n", "err\n"))
        self.assertFalse(r.ok)
        self.assertRegex(r.duration, r"^[0-9.]+(ns|µs|us|ms|s)$")

    def test_exec_args_env_workdir_and_argv_mode(self) -> None:
        self.sb.exec("mkdir -p sub")
        r = self.sb.exec("printf '%s|' \"$GREETING\"; pwd", args=None, env={"GREETING": "hi there"}, workdir="sub")
        self.assertTrue(r.stdout.startswith("hi there|"), r.stdout)
        self.assertTrue(r.stdout.rstrip().endswith("/sub"), r.stdout)
        r2 = self.sb.exec("printf", args=["%s-%s", "a b", "c"], mode="argv")
        self.assertEqual(r2.stdout, "a b-c")
        r3 = self.sb.exec("echo", args=["it's", "$HOME"])
        self.assertEqual(r3.stdout, "it's $HOME\n")

    def test_exec_deadline_raises_timeout(self) -> None:
        t0 = time.monotonic()
        with self.assertRaises(Timeout) as ctx:
            self.sb.exec("sleep 5", timeout="300ms")
        self.assertLess(time.monotonic() - t0, 4)
        self.assertEqual(ctx.exception.status, 408)

    def test_sync_exec_longer_than_client_timeout(self) -> None:
        with Client(url(), api_key=API_KEY, timeout=0.5) as short:
            r = short.get(self.sb.id).exec("sleep 1.2; echo done", timeout=5)
        self.assertEqual(r.stdout, "done\n")

    def test_bad_exec_requests(self) -> None:
        with self.assertRaises(BadRequest) as ctx:
            self.sb.exec("true", timeout="forever")
        self.assertEqual(ctx.exception.details[0]["field"], "timeout")
        with self.assertRaises(BadRequest):
            self.sb.exec("true", mode="bogus")

    def test_stream_yields_chunks_then_exit(self) -> None:
        chunks = list(self.sb.exec_stream("echo a; echo b >&2; exit 3"))
        self.assertEqual(chunks[-1].stream, "exit")
        self.assertEqual(chunks[-1].exit_code, 3)
        out = "".join(c.data for c in chunks if c.stream == "stdout")
        err = "".join(c.data for c in chunks if c.stream == "stderr")
        self.assertEqual((out, err), ("a\n", "b\n"))

    def test_stream_is_incremental(self) -> None:
        t0 = time.monotonic()
        with self.sb.exec_stream("echo first; sleep 1.5; echo second") as stream:
            first = next(stream)
            t_first = time.monotonic() - t0
            rest = list(stream)
        self.assertEqual(first.data, "first\n")
        self.assertLess(t_first, 1.2)
        self.assertEqual(rest[-1].exit_code, 0)
        self.assertEqual(stream.exit_code, 0)
        self.assertTrue(stream.done)
        self.assertIsNotNone(stream.request_id)

    def test_stream_not_cut_by_client_timeout(self) -> None:
        with Client(url(), api_key=API_KEY, timeout=0.5) as short:
            stream = short.get(self.sb.id).exec_stream("sleep 1.5; echo late")
            chunks = list(stream)
        self.assertEqual(chunks[0].data, "late\n")
        self.assertEqual(stream.exit_code, 0)

    def test_stream_timeout_reports_124(self) -> None:
        stream = self.sb.exec_stream("echo x; sleep 5", timeout=0.4)
        self.assertEqual(stream.wait(), 124)
        self.assertTrue(stream.timed_out)

    def test_10mb_stream_complete_and_in_order(self) -> None:
        n = 1_400_000
        expected = "".join(f"{i}\n" for i in range(1, n + 1))
        self.assertGreater(len(expected), 10_000_000)
        parts: List[str] = []
        count = 0
        stream = self.sb.exec_stream(f"seq 1 {n}")
        for c in stream:
            count += 1
            if c.stream == "stdout":
                parts.append(c.data)
            else:
                self.assertEqual(c.stream, "exit")
        self.assertEqual(stream.exit_code, 0)
        self.assertGreater(count, 10)
        self.assertEqual("".join(parts), expected)

    def test_closing_the_stream_kills_the_command(self) -> None:
        # Control: left alone, the command creates its marker.
        self.assertEqual(self.sb.exec_stream("sleep 0.3; touch control").wait(), 0)
        self.assertFalse(self.sb.stat_file("control")["is_dir"])

        stream = self.sb.exec_stream("echo started; sleep 1.5; touch marker")
        first = next(stream)
        self.assertEqual(first.data, "started\n")
        stream.close()
        self.assertTrue(stream.closed)
        self.assertEqual(list(stream), [])
        time.sleep(2.5)
        with self.assertRaises(FileNotFound):
            self.sb.stat_file("marker")
        # The server recorded the cancelled exec, and the sandbox still works.
        self.assertEqual(self.sb.exec("echo ok").stdout, "ok\n")

    def test_breaking_out_of_a_for_loop_kills_the_command(self) -> None:
        for chunk in self.sb.exec_stream("echo go; sleep 1.5; touch marker2"):
            self.assertEqual(chunk.data, "go\n")
            break
        time.sleep(2.5)
        with self.assertRaises(FileNotFound):
            self.sb.stat_file("marker2")


class StreamPrestartErrorTests(SyncTestCase):
    def test_unknown_sandbox_and_bad_timeout(self) -> None:
        ghost = stacyvm.Sandbox(self.client._http, "sb-00000000")
        with self.assertRaises(SandboxNotFound):
            ghost.exec_stream("true")
        sb = self.spawn()
        with self.assertRaises(BadRequest) as ctx:
            sb.exec_stream("true", timeout="1h")  # above max_exec_timeout (2m)
        self.assertIn("max_exec_timeout", ctx.exception.message)


class FileTests(SyncTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.sb = self.spawn()

    def test_text_round_trip_and_listing(self) -> None:
        self.sb.write_file("/workspace/hello.txt", "hello wörld\n")
        self.assertEqual(self.sb.read_file("/workspace/hello.txt"), "hello wörld\n")
        st = self.sb.stat_file("hello.txt")
        self.assertEqual(
            (st["path"], st["name"], st["size"], st["is_dir"]), ("/workspace/hello.txt", "hello.txt", 13, False)
        )
        self.assertEqual(st["mode"], "0644")
        names = [e["name"] for e in self.sb.list_files("/workspace")]
        self.assertIn("hello.txt", names)
        self.assertIn("workspace", [e["name"] for e in self.sb.list_files()])

    def test_all_256_byte_values_round_trip(self) -> None:
        data = bytes(range(256)) * 4 + bytes(reversed(range(256)))
        self.sb.write_file("bin/all.bin", data)
        self.assertEqual(self.sb.read_file_bytes("bin/all.bin"), data)
        self.assertEqual(self.sb.stat_file("bin/all.bin")["size"], len(data))
        # bytearray / memoryview / file objects upload raw too
        self.sb.write_file("bin/ba.bin", bytearray(data))
        self.assertEqual(self.sb.read_file_bytes("bin/ba.bin"), data)
        import io

        self.sb.write_file("bin/f.bin", io.BytesIO(data), mode="0600")
        self.assertEqual(self.sb.read_file_bytes("bin/f.bin"), data)
        self.assertEqual(self.sb.stat_file("bin/f.bin")["mode"], "0600")
        # read_file decodes leniently; read_file_bytes is exact
        self.assertIn("\ufffd", self.sb.read_file("bin/all.bin"))

    def test_raw_upload_is_not_bound_by_the_json_limit(self) -> None:
        big = os.urandom(MAX_BODY_BYTES + 200_000)
        self.sb.write_file("big.bin", big)
        self.assertEqual(self.sb.read_file_bytes("big.bin"), big)
        with self.assertRaises(PayloadTooLarge) as ctx:
            self.sb.write_file("big.txt", "x" * (MAX_BODY_BYTES + 10))
        self.assertEqual(ctx.exception.status, 413)

    def test_modes_chmod_move_glob_delete(self) -> None:
        self.sb.write_file("run.sh", "#!/bin/sh\necho ran\n", mode=0o700)
        self.assertEqual(self.sb.stat_file("run.sh")["mode"], "0700")
        self.sb.chmod_file("run.sh", "0755")
        self.assertEqual(self.sb.stat_file("run.sh")["mode"], "0755")
        self.sb.chmod_file("run.sh", 0o750)
        self.assertEqual(self.sb.stat_file("run.sh")["mode"], "0750")
        self.assertEqual(self.sb.exec("./run.sh").stdout, "ran\n")

        self.sb.write_file("a.log", "1")
        self.sb.write_file("b.log", "2")
        self.sb.write_file("c.txt", "3")
        self.assertEqual(self.sb.glob_files("/workspace/*.log"), ["/workspace/a.log", "/workspace/b.log"])

        self.sb.move_file("a.log", "moved/a.log")
        self.assertEqual(self.sb.read_file("moved/a.log"), "1")
        with self.assertRaises(FileNotFound) as ctx:
            self.sb.read_file("a.log")
        self.assertEqual(ctx.exception.path, "a.log")

        self.sb.delete_file("b.log")
        with self.assertRaises(FileNotFound):
            self.sb.stat_file("b.log")
        with self.assertRaises(BadRequest):
            self.sb.delete_file("moved")  # not empty
        self.sb.delete_file("moved", recursive=True)
        with self.assertRaises(FileNotFound):
            self.sb.stat_file("moved")

    def test_path_escape_is_rejected(self) -> None:
        with self.assertRaises(BadRequest):
            self.sb.read_file("../../../../etc/passwd")


class ErrorMappingTests(unittest.TestCase):
    def test_wrong_key_is_unauthorized_with_request_id(self) -> None:
        with Client(url(), api_key="wrong") as c:
            with self.assertRaises(Unauthorized) as ctx:
                c.list()
        e = ctx.exception
        self.assertEqual((e.code, e.status), ("UNAUTHORIZED", 401))
        self.assertRegex(e.request_id or "", r"^[0-9a-f-]{36}$")
        self.assertEqual(str(e), "invalid or missing API key")
        self.assertIsInstance(e, StacyVMError)

    def test_validation_errors_carry_details(self) -> None:
        with Client(url(), api_key=API_KEY) as c:
            with self.assertRaises(BadRequest) as ctx:
                c.spawn(vcpus=0, memory_mb=1)
            fields = sorted(d["field"] for d in ctx.exception.details)
            self.assertEqual(fields, ["body.memory_mb", "body.vcpus"])
            with self.assertRaises(ResourceLimit) as ctx2:
                c.spawn(ttl="48h")
            self.assertEqual(ctx2.exception.status, 429)
            with self.assertRaises(NotFound) as ctx3:
                c.spawn(provider="nope")
            self.assertNotIsInstance(ctx3.exception, SandboxNotFound)

    def test_sandbox_not_found_for_unknown_id(self) -> None:
        with Client(url(), api_key=API_KEY) as c:
            with self.assertRaises(SandboxNotFound) as ctx:
                c.get("sb-00000000")
        self.assertEqual(ctx.exception.sandbox_id, "sb-00000000")
        self.assertTrue(ctx.exception.request_id)


if __name__ == "__main__":
    unittest.main()
