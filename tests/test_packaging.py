"""The project's packaging metadata builds without warnings (``pip install`` prints none)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_METADATA = ("import setuptools.build_meta as b, sys; "
                  "b.prepare_metadata_for_build_wheel(sys.argv[1])")


def test_metadata_builds_without_setuptools_warnings(tmp_path: Path) -> None:
    src, meta = tmp_path / "src", tmp_path / "meta"
    src.mkdir(), meta.mkdir()
    for name in ("pyproject.toml", "README.md"):  # a copy: nothing is written to the checkout
        shutil.copy(ROOT / name, src / name)
    res = subprocess.run([sys.executable, "-c", BUILD_METADATA, str(meta)], cwd=src,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Warning" not in res.stdout + res.stderr, res.stderr[-2000:]
    info = next(meta.glob("*.dist-info")) / "METADATA"
    assert "License-Expression: Apache-2.0" in info.read_text()
