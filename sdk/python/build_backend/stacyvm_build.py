"""In-tree PEP 517 build backend for the stacyvm SDK, standard library only.

Why not setuptools: pip builds in an isolated environment and would download
setuptools (and, for setuptools < 70.1, ``wheel``) from an index. With this
backend ``requires = []``, so ``pip install ./sdk/python`` works with no
network, no index and no build tools, on any Python >= 3.9.

It builds a pure-Python ``py3-none-any`` wheel of the ``stacyvm`` package, an
sdist, and PEP 660 editable wheels (a ``.pth`` file pointing at this tree).
Metadata comes from the ``[project]`` table of ``pyproject.toml``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "stacyvm"
# Fixed timestamp so wheels are reproducible (1980-01-01 is zip's epoch).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# -- metadata --------------------------------------------------------------------------


def _parse_project_table(text: str) -> Dict[str, Any]:
    """The [project] table. tomllib where available (3.11+); otherwise a small
    parser for the subset this pyproject uses (strings, string arrays, inline
    tables of strings)."""
    try:
        import tomllib  # type: ignore[import-not-found]

        return dict(tomllib.loads(text).get("project", {}))
    except ImportError:
        pass
    out: Dict[str, Any] = {}
    in_project = False
    lines = text.splitlines()
    i = 0
    string = r'"((?:[^"\\]|\\.)*)"'
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if line.startswith("["):
            in_project = line == "[project]"
            continue
        if not in_project or not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = (s.strip() for s in line.partition("="))
        if value.startswith("[") and not value.endswith("]"):
            while i < len(lines) and not value.endswith("]"):
                value += " " + lines[i].strip()
                i += 1
        if value.startswith('"'):
            m = re.match(string, value)
            out[key] = m.group(1) if m else value
        elif value.startswith("["):
            out[key] = re.findall(string, value)
        elif value.startswith("{"):
            out[key] = dict(re.findall(r"(\w+)\s*=\s*" + string, value))
    return out


def _project() -> Dict[str, Any]:
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        return _parse_project_table(f.read())


def _name_version() -> Tuple[str, str]:
    proj = _project()
    return str(proj["name"]), str(proj["version"])


def _metadata() -> str:
    proj = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {proj['name']}",
        f"Version: {proj['version']}",
    ]
    if proj.get("description"):
        lines.append(f"Summary: {proj['description']}")
    if proj.get("requires-python"):
        lines.append(f"Requires-Python: {proj['requires-python']}")
    lic = proj.get("license")
    if isinstance(lic, dict) and lic.get("text"):
        lines.append(f"License: {lic['text']}")
    for c in proj.get("classifiers", []) or []:
        lines.append(f"Classifier: {c}")
    for url_name, url in (proj.get("urls") or {}).items():
        lines.append(f"Project-URL: {url_name}, {url}")
    readme = proj.get("readme")
    body = ""
    if isinstance(readme, str) and os.path.exists(os.path.join(ROOT, readme)):
        lines.append("Description-Content-Type: text/markdown")
        with open(os.path.join(ROOT, readme), encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


def _wheel_file() -> str:
    return "Wheel-Version: 1.0\nGenerator: stacyvm_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def _dist_info(name: str, version: str) -> str:
    return f"{name}-{version}.dist-info"


def _package_files() -> List[str]:
    """Paths (relative to ROOT, '/' separated) of every file of the package."""
    files: List[str] = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, PACKAGE)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            if fn.endswith((".pyc", ".pyo")):
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), ROOT)
            files.append(rel.replace(os.sep, "/"))
    return files


# -- wheels ----------------------------------------------------------------------------


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")
    return f"{path},sha256={digest},{len(data)}"


def _write_wheel(wheel_directory: str, entries: List[Tuple[str, bytes]]) -> str:
    name, version = _name_version()
    dist_info = _dist_info(name, version)
    entries = entries + [
        (f"{dist_info}/METADATA", _metadata().encode("utf-8")),
        (f"{dist_info}/WHEEL", _wheel_file().encode("utf-8")),
        (f"{dist_info}/top_level.txt", f"{PACKAGE}\n".encode("utf-8")),
    ]
    record_path = f"{dist_info}/RECORD"
    record = "\n".join([_record_line(p, d) for p, d in entries] + [f"{record_path},,"]) + "\n"
    entries.append((record_path, record.encode("utf-8")))
    filename = f"{name}-{version}-py3-none-any.whl"
    os.makedirs(wheel_directory, exist_ok=True)
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in entries:
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return filename


def _read(rel: str) -> bytes:
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


def build_wheel(
    wheel_directory: str,
    config_settings: Optional[Dict[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    return _write_wheel(wheel_directory, [(rel, _read(rel)) for rel in _package_files()])


def build_editable(
    wheel_directory: str,
    config_settings: Optional[Dict[str, Any]] = None,
    metadata_directory: Optional[str] = None,
) -> str:
    pth = (ROOT + "\n").encode("utf-8")
    return _write_wheel(wheel_directory, [(f"__editable__.{PACKAGE}.pth", pth)])


def _prepare_metadata(metadata_directory: str) -> str:
    name, version = _name_version()
    dist_info = _dist_info(name, version)
    target = os.path.join(metadata_directory, dist_info)
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, "METADATA"), "w", encoding="utf-8") as f:
        f.write(_metadata())
    with open(os.path.join(target, "WHEEL"), "w", encoding="utf-8") as f:
        f.write(_wheel_file())
    return dist_info


def prepare_metadata_for_build_wheel(metadata_directory: str, config_settings: Optional[Dict[str, Any]] = None) -> str:
    return _prepare_metadata(metadata_directory)


def prepare_metadata_for_build_editable(
    metadata_directory: str, config_settings: Optional[Dict[str, Any]] = None
) -> str:
    return _prepare_metadata(metadata_directory)


def get_requires_for_build_wheel(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[Dict[str, Any]] = None) -> List[str]:
    return []


# -- sdist -----------------------------------------------------------------------------


def build_sdist(sdist_directory: str, config_settings: Optional[Dict[str, Any]] = None) -> str:
    name, version = _name_version()
    base = f"{name}-{version}"
    files = ["pyproject.toml", "README.md", "build_backend/stacyvm_build.py"] + _package_files()
    tests = os.path.join(ROOT, "tests")
    if os.path.isdir(tests):
        for fn in sorted(os.listdir(tests)):
            if fn.endswith(".py"):
                files.append(f"tests/{fn}")
    filename = f"{base}.tar.gz"
    os.makedirs(sdist_directory, exist_ok=True)
    mtime = int(time.time())
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz", format=tarfile.PAX_FORMAT) as tf:

        def add(path: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"{base}/{path}")
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))

        for rel in files:
            if os.path.exists(os.path.join(ROOT, rel)):
                add(rel, _read(rel))
        add("PKG-INFO", _metadata().encode("utf-8"))
    return filename
