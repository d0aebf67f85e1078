"""A tiny pure-Python wheel built on the spot, for tests that install requirements offline."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

__all__ = ["build_wheel"]


def _record(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: str | Path, name: str, version: str, source: str) -> Path:
    """``<out_dir>/<name>-<version>-py3-none-any.whl``: package ``name`` whose ``__init__.py`` is ``source``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: rayfleet.testing\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    path = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
        z.writestr(f"{info}/RECORD", "\n".join([_record(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]) + "\n")
    return path
