"""Runs the SDK test suite from anywhere: `python3 sdk/python/tests/run.py [-q]`.

Same as `python3 -m unittest discover -s sdk/python/tests -t sdk/python -v`, plus
a plain closing line `python-sdk: N passed, N failed, N skipped` that CI can read.
Exits 1 on any failure or error, or when no test ran.
"""

from __future__ import annotations

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)


def main(argv: list) -> int:
    if TOP not in sys.path:
        sys.path.insert(0, TOP)
    suite = unittest.defaultTestLoader.discover(HERE, top_level_dir=TOP)
    result = unittest.TextTestRunner(verbosity=1 if "-q" in argv else 2).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped - len(result.expectedFailures)
    sys.stderr.flush()
    print(f"python-sdk: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
