"""Pure unit tests: durations, modes, URLs, error mapping, NDJSON decoding, models."""

from __future__ import annotations

import datetime
import unittest

from stacyvm import (
    BadRequest,
    Conflict,
    FileNotFound,
    Forbidden,
    InternalError,
    MalformedResponse,
    NotFound,
    PayloadTooLarge,
    ProviderError,
    ResourceLimit,
    SandboxNotFound,
    SpawnAdmissionDecision,
    StacyVMError,
    Template,
    Timeout,
    Unauthorized,
    Unavailable,
)
from stacyvm import _protocol as p
from stacyvm.exceptions import error_from_code, error_from_response


class DurationTests(unittest.TestCase):
    def test_to_go_duration(self) -> None:
        self.assertEqual(p.to_go_duration("1h30m"), "1h30m")
        self.assertEqual(p.to_go_duration(90), "90s")
        self.assertEqual(p.to_go_duration(2.0), "2s")
        self.assertEqual(p.to_go_duration(0.25), "250ms")
        self.assertEqual(p.to_go_duration(datetime.timedelta(minutes=5)), "300s")
        self.assertIsNone(p.to_go_duration(None))
        with self.assertRaises(TypeError):
            p.to_go_duration(True)
        with self.assertRaises(TypeError):
            p.to_go_duration([1])  # type: ignore[arg-type]

    def test_parse_go_duration(self) -> None:
        cases = {"30s": 30, "1h30m": 5400, "1.5h": 5400, "250ms": 0.25, "0": 0, "2m0.5s": 120.5, "100us": 1e-4}
        for text, secs in cases.items():
            self.assertAlmostEqual(p.parse_go_duration(text) or 0, secs, msg=text)
        for bad in ("", "forever", "10", "1d", "h", "1h 2m"):
            self.assertIsNone(p.parse_go_duration(bad), bad)

    def test_exec_wait_bounds(self) -> None:
        self.assertEqual(p.exec_call("sb-1", "x").wait, p.WAIT_UNBOUNDED)
        self.assertEqual(p.exec_call("sb-1", "x", timeout="2m").wait, 120.0)
        self.assertEqual(p.exec_call("sb-1", "x", timeout=3, stream=True).wait, 3.0)


class ProtocolTests(unittest.TestCase):
    def test_file_modes(self) -> None:
        self.assertEqual(p.file_mode(0o755), "0755")
        self.assertEqual(p.file_mode(0o4755), "4755")
        self.assertEqual(p.file_mode("644"), "644")
        self.assertIsNone(p.file_mode(None))
        with self.assertRaises(ValueError):
            p.file_mode(0o10000)
        with self.assertRaises(TypeError):
            p.file_mode(True)

    def test_base_url(self) -> None:
        u = p.BaseURL("http://127.0.0.1:7423/api/v1/")
        self.assertEqual((u.host, u.port, u.prefix, u.url), ("127.0.0.1", 7423, "", "http://127.0.0.1:7423"))
        u2 = p.BaseURL("https://example.test/stacy")
        self.assertEqual((u2.port, u2.prefix, u2.host_header), (443, "/stacy", "example.test"))
        self.assertEqual(p.BaseURL("localhost:9000").url, "http://localhost:9000")
        self.assertEqual(p.BaseURL("http://[::1]:7423").host_header, "[::1]:7423")
        with self.assertRaises(ValueError):
            p.BaseURL("ftp://x")

    def test_targets_quote_ids_and_queries(self) -> None:
        c = p.read_file_call("sb-1", "dir/a b&c.txt")
        self.assertEqual(c.target(""), "/api/v1/sandboxes/sb-1/files?path=dir%2Fa%20b%26c.txt")
        with self.assertRaises(ValueError):
            p.get_call("")
        self.assertEqual(p.get_call("a/b").target("/p"), "/p/api/v1/sandboxes/a%2Fb")
        d = p.delete_file_call("sb-1", "x", recursive=True)
        self.assertEqual(d.target(""), "/api/v1/sandboxes/sb-1/files?path=x&recursive=true")
        self.assertEqual(p.delete_file_call("sb-1", "x", False).target(""), "/api/v1/sandboxes/sb-1/files?path=x")

    def test_write_file_call_picks_json_or_raw(self) -> None:
        text = p.write_file_call("sb-1", "a.txt", "hi", mode=0o600)
        self.assertEqual((text.method, text.json_body), ("POST", {"path": "a.txt", "content": "hi", "mode": "0600"}))
        raw = p.write_file_call("sb-1", "a.bin", b"\x00")
        self.assertEqual((raw.method, raw.raw_body), ("PUT", b"\x00"))
        self.assertEqual(raw.body()[1]["Content-Type"], "application/octet-stream")
        with self.assertRaises(TypeError):
            p.write_file_call("sb-1", "a", 12)

    def test_ndjson_decoder(self) -> None:
        d = p.NDJSONDecoder()
        self.assertEqual(d.feed(b'{"a":1}\n{"b"'), [{"a": 1}])
        self.assertEqual(d.feed(b":2}\n\n  \n"), [{"b": 2}])
        self.assertEqual(d.feed('{"c":"\u00e9'.encode()[:-1]), [])  # half a UTF-8 sequence
        self.assertEqual(d.feed('{"c":"\u00e9'.encode()[-1:] + b'"}'), [])
        self.assertEqual(d.finish(), [{"c": "é"}])
        with self.assertRaises(MalformedResponse):
            p.NDJSONDecoder().feed(b"nope\n")
        with self.assertRaises(MalformedResponse):
            p.NDJSONDecoder().feed(b"[1]\n")

    def test_stream_state(self) -> None:
        s = p.StreamState("sb-1", "rid")
        self.assertEqual(s.handle({"data": "x"}).stream, "stdout")
        chunk = s.handle({"stream": "exit", "data": "", "exit_code": 124, "duration": "1s", "timed_out": True})
        self.assertEqual((chunk.exit_code, s.exit_code, s.timed_out, s.done), (124, 124, True, True))
        with self.assertRaises(MalformedResponse):
            p.StreamState("sb-1", None).handle({"stream": "exit", "data": ""})
        with self.assertRaises(SandboxNotFound):
            p.StreamState("sb-1", None).handle(
                {"stream": "error", "code": "NOT_FOUND", "message": "sandbox not found: sb-1"}
            )
        e = p.StreamState("sb-1", None).interrupted("why")
        self.assertIn("why", str(e))


class ErrorMappingTests(unittest.TestCase):
    def test_each_code_has_its_class_and_status(self) -> None:
        table = {
            "BAD_REQUEST": (BadRequest, 400),
            "UNAUTHORIZED": (Unauthorized, 401),
            "FORBIDDEN": (Forbidden, 403),
            "NOT_FOUND": (NotFound, 404),
            "TIMEOUT": (Timeout, 408),
            "CONFLICT": (Conflict, 409),
            "PAYLOAD_TOO_LARGE": (PayloadTooLarge, 413),
            "RESOURCE_LIMIT": (ResourceLimit, 429),
            "INTERNAL_ERROR": (InternalError, 500),
            "UNAVAILABLE": (Unavailable, 503),
        }
        for code, (cls, status) in table.items():
            body = f'{{"code":"{code}","message":"m","request_id":"r","details":[{{"field":"f","problem":"p"}}]}}'
            e = error_from_response(status, {}, body.encode())
            self.assertIs(type(e), cls, code)
            self.assertEqual((e.code, e.status, e.request_id, str(e)), (code, status, "r", "m"))
            self.assertEqual(e.details, [{"field": "f", "problem": "p"}])
            self.assertIs(type(error_from_code(code, "m")), cls)
            self.assertEqual(error_from_code(code, "m").status, status)
        self.assertTrue(issubclass(InternalError, ProviderError))
        self.assertTrue(issubclass(Unavailable, ProviderError))

    def test_fallbacks(self) -> None:
        e = error_from_response(418, {"x-request-id": "hdr"}, b"")
        self.assertIs(type(e), StacyVMError)
        self.assertEqual((e.status, e.request_id, str(e)), (418, "hdr", "HTTP 418"))
        e2 = error_from_response(504, {}, b"gateway timeout")
        self.assertIs(type(e2), ProviderError)
        self.assertEqual(e2.code, "PROVIDER_ERROR")
        e3 = error_from_response(409, {}, b'{"code":"SOMETHING_NEW","message":"x"}')
        self.assertIs(type(e3), Conflict)
        self.assertEqual(e3.code, "SOMETHING_NEW")

    def test_not_found_flavours(self) -> None:
        body = b'{"code":"NOT_FOUND","message":"sandbox not found: sb-1"}'
        e = error_from_response(404, {}, body, sandbox_id="sb-1", path="a")
        self.assertIsInstance(e, SandboxNotFound)
        self.assertEqual(e.sandbox_id, "sb-1")  # type: ignore[attr-defined]
        f = error_from_response(404, {}, b'{"code":"NOT_FOUND","message":"no such file: /workspace/a"}', "sb-1", "a")
        self.assertIsInstance(f, FileNotFound)
        self.assertEqual(f.path, "a")  # type: ignore[attr-defined]
        r = error_from_response(404, {}, b'{"code":"NOT_FOUND","message":"no route for GET /x"}')
        self.assertIs(type(r), NotFound)


class PreviewUrlTests(unittest.TestCase):
    def test_preview_url_forms(self) -> None:
        from stacyvm import Sandbox

        sb = Sandbox(None, "sb-1", {"id": "sb-1"})  # type: ignore[arg-type]
        self.assertEqual(sb.get_preview_url(3000), "http://3000-sb-1.localhost")
        sb = Sandbox(None, "sb-1", {"id": "sb-1", "preview_domain": "p.example"})  # type: ignore[arg-type]
        self.assertEqual(sb.get_preview_url(8080), "http://8080-sb-1.p.example")
        sb = Sandbox(
            None,  # type: ignore[arg-type]
            "sb-1",
            {"id": "sb-1", "preview_domain": "p.example", "preview_scheme": "https", "preview_port": 8443},
        )
        self.assertEqual(sb.get_preview_url(3000), "https://3000-sb-1.p.example:8443")
        for bad in (0, 65536, True, "80"):
            with self.assertRaises(ValueError):
                sb.get_preview_url(bad)  # type: ignore[arg-type]


class ModelTests(unittest.TestCase):
    def test_admission_tolerates_unknown_fields(self) -> None:
        d = SpawnAdmissionDecision.from_dict(
            {"allowed": True, "queueable": False, "selected_worker_id": "local", "brand_new": 1}
        )
        self.assertTrue(d.allowed)
        self.assertEqual(d.selected_worker_id, "local")
        self.assertEqual(d.raw["brand_new"], 1)

    def test_template_uses_server_field_names(self) -> None:
        t = Template("web", "node:20", 1024, 2, "1h")
        self.assertEqual(
            t.to_dict(),
            {"name": "web", "image": "node:20", "memory_mb": 1024, "cpu_cores": 2, "ttl_seconds": 3600},
        )
        t.ttl = "90s"
        t.vcpus = 4
        self.assertEqual((t.ttl_seconds, t.cpu_cores, t.ttl), (90, 4, "90s"))
        with self.assertRaises(ValueError):
            Template("x", "y", ttl_seconds="soon")  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            Template("x", "y", ttl_seconds="1500ms")  # type: ignore[arg-type]
        # Unset fields are left to the server's defaults.
        self.assertEqual(Template("x", "y").to_dict(), {"name": "x", "image": "y"})
        full = Template(
            "x",
            "y",
            provider="mock",
            metadata={"k": "v"},
            description="d",
            env={"A": "1"},
            setup=["true"],
            ports=[],
        ).to_dict()
        self.assertEqual(
            full,
            {
                "name": "x",
                "image": "y",
                "provider": "mock",
                "description": "d",
                "env": {"A": "1"},
                "setup": ["true"],
                "metadata": {"k": "v"},
                "ports": [],
            },
        )
        back = Template.from_dict(
            {"name": "web", "image": "node:20", "cpu_cores": 3, "setup": ["npm i"], "version": 2, "ports": [80]}
        )
        self.assertEqual((back.cpu_cores, back.ttl_seconds, back.setup), (3, None, ["npm i"]))
        self.assertEqual((back.version, back.ports, back.raw["version"]), (2, [80], 2))

    def test_template_spawn_call_sends_only_the_overrides_given(self) -> None:
        from stacyvm import _protocol as p

        self.assertEqual(p.template_spawn_call("t").json_body, {})
        call = p.template_spawn_call("a b", provider="mock", ttl=90, owner_id="o", metadata={"m": "1"}, env={"E": "2"})
        self.assertEqual((call.method, call.path), ("POST", "/templates/a%20b/spawn"))
        self.assertEqual(
            call.json_body,
            {"provider": "mock", "ttl": "90s", "owner_id": "o", "metadata": {"m": "1"}, "env": {"E": "2"}},
        )

if __name__ == "__main__":
    unittest.main()
