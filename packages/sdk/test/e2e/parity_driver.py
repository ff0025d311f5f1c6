"""Parity driver: the cross-SDK scenario run through the Python SDK.

    STACYVM_API_KEY=... PYTHONPATH=sdk/python python3 parity_driver.py http://127.0.0.1:PORT

Prints one JSON object, ``{"sandbox_id": ..., "result": {...}}``, on stdout.
``parity.e2e.test.ts`` runs the same scenario through the TypeScript SDK, builds
the same object, normalises both the same way (ids, timestamps, durations,
request ids) and asserts they are deep-equal. Keep the two in step: every step
here has its twin in ``tsScenario`` there, with the same keys and values.

Values are recorded raw (the test normalises them); errors are recorded as
``{class, native, code, status, message, request_id, details, is_base}`` where
``class`` is the TypeScript SDK's name for the error's class (found with
``isinstance``, so the Python hierarchy is what is checked) and ``native`` is the
Python class name.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Tuple, Type

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(HERE)))), "sdk", "python")
if SDK_DIR not in sys.path:  # also runnable without PYTHONPATH
    sys.path.insert(0, SDK_DIR)

import stacyvm  # noqa: E402
from stacyvm import Client, Sandbox, StacyVMError  # noqa: E402

# Python class -> the TypeScript SDK's class name, most specific first.
TS_NAME: List[Tuple[Type[StacyVMError], str]] = [
    (stacyvm.BadRequest, "BadRequestError"),
    (stacyvm.Unauthorized, "UnauthorizedError"),
    (stacyvm.Forbidden, "ForbiddenError"),
    (stacyvm.NotFound, "NotFoundError"),
    (stacyvm.Timeout, "TimeoutError"),
    (stacyvm.Conflict, "ConflictError"),
    (stacyvm.PayloadTooLarge, "PayloadTooLargeError"),
    (stacyvm.ResourceLimit, "ResourceLimitError"),
    (stacyvm.InternalError, "InternalError"),
    (stacyvm.Unavailable, "UnavailableError"),
    (stacyvm.StreamInterrupted, "StreamInterruptedError"),
    (stacyvm.ClientTimeout, "RequestTimeoutError"),
    (stacyvm.ConnectionError, "ConnectionError"),
    (stacyvm.MalformedResponse, "MalformedResponseError"),
]


def error_record(fn: Callable[[], Any]) -> Dict[str, Any]:
    try:
        fn()
    except StacyVMError as err:
        cls = next((name for py, name in TS_NAME if isinstance(err, py)), "StacyVMError")
        return {
            "class": cls,
            "native": type(err).__name__,
            "code": err.code,
            "status": err.status,
            "message": str(err),
            "request_id": err.request_id,
            "details": err.details,
            "is_base": isinstance(err, StacyVMError),
        }
    return {"class": None, "native": None, "error": "no error raised"}


def exec_record(r: Any) -> Dict[str, Any]:
    return {"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "duration": r.duration}


def collect_stream(stream: Any) -> Dict[str, Any]:
    """Reads a whole exec stream into one record: joined output, line order across
    stdout/stderr, and the exit line."""
    out: List[str] = []
    err: List[str] = []
    order: List[str] = []
    exits: List[Dict[str, Any]] = []
    for chunk in stream:
        if chunk.stream == "exit":
            exits.append(
                {
                    "data": chunk.data,
                    "exit_code": chunk.exit_code,
                    "timed_out": chunk.timed_out,
                    "duration": chunk.duration,
                }
            )
        else:
            (out if chunk.stream == "stdout" else err).append(chunk.data)
            order.extend(f"{chunk.stream}:{line}" for line in chunk.data.splitlines())
    return {"stdout": "".join(out), "stderr": "".join(err), "order": order, "exits": exits}


def file_bytes() -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(256 * 4 + 3))


def scenario(client: Client) -> Tuple[str, Dict[str, Any]]:
    r: Dict[str, Any] = {}
    errors: Dict[str, Any] = {}

    # -- spawn, list, get ----------------------------------------------------------
    sb: Sandbox = client.spawn(ttl="10m", metadata={"suite": "parity", "sdk": "any"})
    r["spawn"] = {"info": sb.info, "state": sb.state, "metadata": sb.metadata}
    r["listed"] = [s.id for s in client.list()].count(sb.id)
    r["get"] = client.get(sb.id).info

    # -- exec ------------------------------------------------------------------------
    sb.write_file("sub/marker.txt", "m")
    r["exec_env_workdir"] = exec_record(
        sb.exec(
            'echo "$GREETING"; ls; echo err >&2; exit 3',
            env={"GREETING": "hi parity"},
            workdir="/workspace/sub",
        )
    )
    r["exec_argv"] = exec_record(sb.exec("printf", args=["%s|", "a b", "$HOME", "it's"], mode="argv"))
    r["exec_shell_args"] = exec_record(sb.exec('printf "%s|"', args=["x y", "$z"]))
    r["exec_unicode"] = exec_record(sb.exec("printf", args=["h\u00e9llo \u2713 \U0001f680\\n"], mode="argv"))

    # -- streamed exec -------------------------------------------------------------------
    r["stream_shell"] = collect_stream(
        sb.exec_stream("echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exit 7")
    )
    r["stream_argv"] = collect_stream(
        sb.exec_stream("sh", args=["-c", "printf abc; printf def >&2"], mode="argv", env={"X": "1"})
    )

    # -- text and binary files -----------------------------------------------------------
    text = "h\u00e9llo \u2713 \U0001f680\nline two\n"
    sb.write_file("notes/hello.txt", text)
    back = sb.read_file("notes/hello.txt")
    r["text"] = {"read": back, "equal": back == text}
    data = file_bytes()
    sb.write_file("bin/all.bin", data, mode=0o600)
    got = sb.read_file_bytes("bin/all.bin")
    r["binary"] = {
        "distinct": len(set(data)),
        "length": len(got),
        "equal": got == data,
        "sha256": hashlib.sha256(got).hexdigest(),
        "sandbox_sha256": sb.exec("sha256sum bin/all.bin").stdout.split(" ")[0],
    }

    # -- list / stat / glob / move / chmod / delete --------------------------------------
    r["list"] = sb.list_files("/workspace")
    r["stat"] = sb.stat_file("bin/all.bin")
    r["glob"] = sb.glob_files("/workspace/**/*.txt")
    sb.move_file("notes/hello.txt", "archive/deep/hello.txt")
    r["after_move"] = {
        "stat": sb.stat_file("archive/deep/hello.txt"),
        "glob": sb.glob_files("/workspace/**/*.txt"),
        "read": sb.read_file("archive/deep/hello.txt"),
    }
    errors["stat_moved_away"] = error_record(lambda: sb.stat_file("notes/hello.txt"))
    sb.chmod_file("archive/deep/hello.txt", "0640")
    sb.write_file("run.sh", "#!/bin/sh\necho ran \"$1\"\n")
    sb.chmod_file("run.sh", 0o755)
    r["chmod"] = {
        "text_mode": sb.stat_file("archive/deep/hello.txt")["mode"],
        "script_mode": sb.stat_file("run.sh")["mode"],
        "run": exec_record(sb.exec("./run.sh", args=["ok"])),
    }
    errors["delete_nonempty_dir"] = error_record(lambda: sb.delete_file("archive"))
    sb.delete_file("archive", recursive=True)
    sb.delete_file("run.sh")
    r["after_delete"] = {
        "glob": sb.glob_files("/workspace/**"),
        "names": [f["name"] for f in sb.list_files("/workspace")],
    }
    errors["stat_deleted_dir"] = error_record(lambda: sb.stat_file("archive"))
    errors["read_missing_file"] = error_record(lambda: sb.read_file("nope.txt"))
    errors["read_bytes_missing_file"] = error_record(lambda: sb.read_file_bytes("nope/nope.bin"))
    errors["path_escape"] = error_record(lambda: sb.read_file("../../etc/passwd"))

    # -- lifetime ---------------------------------------------------------------------------
    now_ms = int(time.time() * 1000)
    returned = sb.extend_ttl("2h")
    r["extend"] = {
        "now_ms": now_ms,
        "expires_at": sb.expires_at,
        "returned_self": returned is sb,
        "state": sb.state,
    }
    refreshed = sb.refresh()
    r["refresh"] = {"info": sb.info, "returned_self": refreshed is sb}
    errors["extend_above_max"] = error_record(lambda: sb.extend_ttl("100h"))

    # -- destroy, then everything is a missing sandbox ---------------------------------------
    sb.destroy()
    r["destroy"] = {"state": sb.state}
    errors["destroy_again"] = error_record(sb.destroy)
    errors["exec_destroyed"] = error_record(lambda: sb.exec("true"))
    errors["stream_destroyed"] = error_record(lambda: sb.exec_stream("true").wait())
    errors["refresh_destroyed"] = error_record(sb.refresh)
    errors["read_destroyed"] = error_record(lambda: sb.read_file("sub/marker.txt"))
    errors["get_destroyed"] = error_record(lambda: client.get(sb.id))
    r["listed_after_destroy"] = [s.id for s in client.list()].count(sb.id)

    r["errors"] = errors
    return sb.id, r


def main() -> int:
    url = sys.argv[1]
    with Client(url, api_key=os.environ.get("STACYVM_API_KEY"), timeout=20) as client:
        sandbox_id, result = scenario(client)
    json.dump({"sandbox_id": sandbox_id, "result": result}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
