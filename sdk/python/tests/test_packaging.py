"""`pip install ./sdk/python` works offline into a fresh venv; the wheel is well formed."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
import zipfile

import stacyvm
from tests.support import SDK_DIR, watchdog_start, watchdog_stop


def setUpModule() -> None:
    watchdog_start()


def tearDownModule() -> None:
    watchdog_stop()


def load_backend():  # type: ignore[no-untyped-def]
    path = os.path.join(SDK_DIR, "build_backend", "stacyvm_build.py")
    spec = importlib.util.spec_from_file_location("stacyvm_build_under_test", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def offline_env() -> dict:
    """No index, no find-links, no pip config: nothing but the source tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        PIP_NO_INPUT="1",
    )
    return env


class BackendTests(unittest.TestCase):
    def test_version_is_single(self) -> None:
        backend = load_backend()
        name, version = backend._name_version()
        self.assertEqual((name, version), ("stacyvm", stacyvm.__version__))

    def test_toml_fallback_parser_matches_tomllib(self) -> None:
        backend = load_backend()
        with open(os.path.join(SDK_DIR, "pyproject.toml"), encoding="utf-8") as f:
            text = f.read()
        import builtins

        real_import = builtins.__import__

        def no_tomllib(name, *args, **kwargs):  # type: ignore[no-untyped-def]
            if name == "tomllib":
                raise ImportError("simulated Python < 3.11")
            return real_import(name, *args, **kwargs)

        builtins.__import__ = no_tomllib
        try:
            fallback = backend._parse_project_table(text)
        finally:
            builtins.__import__ = real_import
        for key in ("name", "version", "description", "requires-python", "readme", "classifiers", "license"):
            self.assertIn(key, fallback)
        try:
            import tomllib  # type: ignore[import-not-found]
        except ImportError:
            return
        real = tomllib.loads(text)["project"]
        for key in ("name", "version", "description", "requires-python", "readme", "classifiers", "license"):
            self.assertEqual(fallback[key], real[key], key)

    def test_wheel_contents_and_record(self) -> None:
        backend = load_backend()
        with tempfile.TemporaryDirectory() as d:
            name = backend.build_wheel(d)
            self.assertEqual(name, f"stacyvm-{stacyvm.__version__}-py3-none-any.whl")
            with zipfile.ZipFile(os.path.join(d, name)) as zf:
                names = zf.namelist()
                self.assertIn("stacyvm/__init__.py", names)
                self.assertIn("stacyvm/py.typed", names)
                self.assertFalse([n for n in names if "__pycache__" in n or n.startswith("tests/")])
                dist = f"stacyvm-{stacyvm.__version__}.dist-info"
                meta = zf.read(f"{dist}/METADATA").decode()
                self.assertIn(f"Version: {stacyvm.__version__}", meta)
                self.assertIn("Requires-Python: >=3.9", meta)
                self.assertNotIn("Requires-Dist", meta)  # standard library only
                rows = list(csv.reader(io.StringIO(zf.read(f"{dist}/RECORD").decode())))
                self.assertEqual(sorted(r[0] for r in rows), sorted(names))
                for path, digest, size in rows:
                    if path.endswith("RECORD"):
                        continue
                    data = zf.read(path)
                    want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                    self.assertEqual((digest, int(size)), (f"sha256={want}", len(data)), path)
            sdist = backend.build_sdist(d)
            with tarfile.open(os.path.join(d, sdist)) as tf:
                members = tf.getnames()
            base = f"stacyvm-{stacyvm.__version__}"
            for needed in (
                "pyproject.toml",
                "PKG-INFO",
                "README.md",
                "build_backend/stacyvm_build.py",
                "stacyvm/client.py",
            ):
                self.assertIn(f"{base}/{needed}", members)


class OfflineInstallTests(unittest.TestCase):
    def test_pip_install_into_a_fresh_venv_without_network(self) -> None:
        with tempfile.TemporaryDirectory(prefix="stacyvm-venv-") as tmp:
            venv = os.path.join(tmp, "venv")
            made = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True, timeout=180)
            if made.returncode != 0:
                self.skipTest(
                    "cannot create a venv with pip (`python3 -m venv` failed; on Debian install the "
                    f"python3-venv package): {made.stderr.strip()[-300:]}"
                )
            py = os.path.join(venv, "bin", "python")
            pip = subprocess.run(
                [py, "-m", "pip", "install", "--no-index", "--no-cache-dir", SDK_DIR],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=tmp,
                env=offline_env(),
            )
            self.assertEqual(pip.returncode, 0, pip.stdout[-2000:] + pip.stderr[-2000:])
            check = subprocess.run(
                [
                    py,
                    "-c",
                    "import stacyvm, sys; print(stacyvm.__file__); print(stacyvm.__version__); "
                    "c = stacyvm.Client('http://127.0.0.1:9'); print(type(c).__name__)",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp,  # not the source tree: the installed copy must be found
                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )
            self.assertEqual(check.returncode, 0, check.stderr)
            file_, version, cls = check.stdout.split()
            self.assertTrue(file_.startswith(venv), file_)
            self.assertEqual((version, cls), (stacyvm.__version__, "Client"))


if __name__ == "__main__":
    unittest.main()
