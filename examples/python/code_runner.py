#!/usr/bin/env python3
"""A small "code-runner agent loop" on the StacyVM Python SDK.

It spawns one sandbox, and for each task writes a program into it, runs it with a
streamed exec (output is printed live, as it arrives), looks at the exit code and,
when a run fails, asks a "model" for a fixed program and runs that. The model here
is SCRIPTED: a stand-in for an LLM call that returns canned fixes, so the example
runs offline and its output is stable. The sandbox is always destroyed at the end
(``with client.spawn(...) as sb:``), after a failure or Ctrl-C too.

    STACYVM_URL=http://127.0.0.1:7423 STACYVM_API_KEY=... python3 examples/python/code_runner.py

(with the SDK installed, ``pip install ./sdk/python``, or ``PYTHONPATH=sdk/python``.)

Options (flags win over environment variables):
  --url URL          STACYVM_URL        server URL (default http://127.0.0.1:7423)
                     STACYVM_API_KEY    API key (environment only: keys do not belong in argv)
  --provider NAME    STACYVM_PROVIDER   provider (default: the server's default, e.g. mock)
  --image IMAGE      STACYVM_IMAGE      image (default: the server's; it needs python3 and sh)
  --no-fix                              do not ask the scripted model for fixes

Exit status: 0 when every task passed (possibly after a fix), 1 otherwise, 130 on Ctrl-C or
SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

from stacyvm import Client, FileNotFound, Sandbox, StacyVMError


@dataclass
class Task:
    name: str
    file: str
    argv: List[str]  # run without a shell; relative paths are under /workspace
    code: str


TASKS = [
    Task(
        name="hello",
        file="hello.py",
        argv=["python3", "hello.py"],
        code="\n".join(
            [
                "import sys, time",
                "for i in range(1, 4):",
                '    print(f"working... step {i}/3", flush=True)',
                "    time.sleep(0.2)",
                'print(f"hello from python {sys.version_info[0]} in the sandbox")',
                "",
            ]
        ),
    ),
    # This first version has a bug (a misspelled variable): the run fails and the
    # loop asks the model for a fix.
    Task(
        name="primes",
        file="primes.py",
        argv=["python3", "primes.py"],
        code="\n".join(
            [
                "def primes_below(n):",
                "    found = []",
                "    for k in range(2, n):",
                "        if all(k % p for p in fund):",
                "            found.append(k)",
                "    return found",
                "",
                "primes = primes_below(50)",
                'with open("primes.txt", "w") as f:',
                '    f.write("\\n".join(str(p) for p in primes) + "\\n")',
                'print(f"{len(primes)} primes below 50, largest {primes[-1]}")',
                "",
            ]
        ),
    ),
    # Uses the file the previous task wrote: the sandbox keeps its files between commands.
    Task(
        name="report",
        file="report.sh",
        argv=["sh", "report.sh"],
        code="\n".join(
            [
                "set -e",
                "count=$(wc -l < primes.txt)",
                'echo "primes.txt has $((count)) lines"',
                'echo "largest prime: $(tail -n 1 primes.txt)"',
                "",
            ]
        ),
    ),
]

MAX_ATTEMPTS = 3


@dataclass
class RunResult:
    exit_code: int
    duration: str
    timed_out: bool
    stdout: str
    stderr: str


@dataclass
class Fix:
    explanation: str
    code: str


def scripted_model(task: Task, code: str, result: RunResult) -> Optional[Fix]:
    """SCRIPTED STAND-IN FOR AN LLM. A real agent would send the task, the program
    and the failed run's output to a model and get a new program back. This one
    recognises the one bug planted above and returns a canned fix; for anything
    else it gives up (returns None)."""
    if task.name == "primes" and re.search(r"NameError: name 'fund' is not defined", result.stderr):
        return Fix(
            explanation="rename the misspelled variable 'fund' to 'found'",
            code=code.replace("for p in fund", "for p in found"),
        )
    return None


def run(sb: Sandbox, task: Task, code: str) -> RunResult:
    """Writes the program, runs it streaming its output live, returns the exit code and output."""
    sb.write_file(task.file, code)
    stdout: List[str] = []
    stderr: List[str] = []
    # Leaving the `with` block early (an exception, Ctrl-C) closes the stream: the server kills the command.
    with sb.exec_stream(
        task.argv[0], args=task.argv[1:], mode="argv", env={"PYTHONUNBUFFERED": "1"}, timeout="60s"
    ) as stream:
        for chunk in stream:
            if chunk.stream == "stdout":
                stdout.append(chunk.data)
                sys.stdout.write(chunk.data)
                sys.stdout.flush()
            elif chunk.stream == "stderr":
                stderr.append(chunk.data)
                sys.stderr.write(chunk.data)
                sys.stderr.flush()
    exit_code = stream.wait()  # the exit line was already read: returns at once
    return RunResult(exit_code, stream.duration or "", stream.timed_out, "".join(stdout), "".join(stderr))


def agent(sb: Sandbox, allow_fixes: bool) -> List[Dict[str, object]]:
    """The agent loop: run each task, feed failures to the model, rerun with its fix."""
    outcomes: List[Dict[str, object]] = []
    for i, task in enumerate(TASKS):
        tag = f"[{i + 1}/{len(TASKS)}] {task.name}"
        code = task.code
        outcome: Dict[str, object] = {"name": task.name, "passed": False, "fixed": False}
        for attempt in range(1, MAX_ATTEMPTS + 1):
            retry = "" if attempt == 1 else f"retry {attempt - 1}: "
            print(f"{tag}: {retry}{' '.join(task.argv)}", flush=True)
            result = run(sb, task, code)
            why = ", timed out" if result.timed_out else ""
            print(f"{tag}: exit {result.exit_code} ({result.duration}{why})", flush=True)
            if result.exit_code == 0:
                outcome = {"name": task.name, "passed": True, "fixed": attempt > 1}
                break
            fix = scripted_model(task, code, result) if allow_fixes else None
            if fix is None:
                print(f"{tag}: no fix proposed, giving up on this task", flush=True)
                break
            print(f"{tag}: fixer (scripted stand-in for an LLM): {fix.explanation}", flush=True)
            code = fix.code
        outcomes.append(outcome)
    # Results can also be read back as files.
    try:
        primes = sb.read_file("primes.txt")
        print(f"primes.txt read back: {' '.join(primes.strip().splitlines())}", flush=True)
    except FileNotFound:
        print("primes.txt read back: (missing)", flush=True)
    return outcomes


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="StacyVM code-runner agent loop example")
    parser.add_argument("--url", default=os.environ.get("STACYVM_URL", "http://127.0.0.1:7423"))
    parser.add_argument("--provider", default=os.environ.get("STACYVM_PROVIDER") or None)
    parser.add_argument("--image", default=os.environ.get("STACYVM_IMAGE") or None)
    parser.add_argument("--no-fix", action="store_true", help="do not ask the scripted model for fixes")
    opts = parser.parse_args(argv)
    # A SIGTERM (e.g. from a supervisor) ends the run like Ctrl-C: the sandbox is still destroyed.
    signal.signal(signal.SIGTERM, _interrupt)
    api_key = os.environ.get("STACYVM_API_KEY") or None

    sandbox_id = ""
    with Client(opts.url, api_key=api_key) as client:
        print(f"code-runner: server {client.base_url}", flush=True)
        try:
            # The `with` block destroys the sandbox however it ends (also on Ctrl-C).
            with client.spawn(
                provider=opts.provider, image=opts.image, ttl="10m", metadata={"example": "code-runner"}
            ) as sb:
                sandbox_id = sb.id
                print(f"sandbox {sb.id} spawned (provider {sb.provider}, image {sb.image})", flush=True)
                outcomes = agent(sb, allow_fixes=not opts.no_fix)
            print(f"sandbox {sandbox_id} destroyed", flush=True)
        except KeyboardInterrupt:
            if sandbox_id:
                print(f"sandbox {sandbox_id} destroyed", flush=True)
            print("interrupted", file=sys.stderr)
            return 130
        except StacyVMError as err:
            if sandbox_id:
                print(f"sandbox {sandbox_id} destroyed", flush=True)
            status = f", HTTP {err.status}" if err.status else ""
            print(f"error: {type(err).__name__} ({err.code}{status}): {err}", file=sys.stderr)
            return 1
    passed = sum(1 for o in outcomes if o["passed"])
    fixed = sum(1 for o in outcomes if o["fixed"])
    print(f"summary: {passed}/{len(outcomes)} tasks passed ({fixed} after a fix)", flush=True)
    return 0 if passed == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
