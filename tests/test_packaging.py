"""The project's packaging metadata builds without warnings (``pip install`` prints none)."""

from __future__ import annotations

import os
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


def _copy_sources(dst: Path) -> None:
    """What the wheel is built from, copied: nothing is written to the checkout."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    for pkg in ("hadmc_core", "cloud_service", "edge_agent"):
        shutil.copytree(ROOT / pkg, dst / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def test_installed_wheel_migrates_a_database_from_any_directory(tmp_path: Path) -> None:
    """``pip install .`` (not editable) ships the Alembic migrations inside the package:
    ``hadmc db upgrade`` run from an empty directory creates every table at head."""
    import sqlite3

    from cloud_service.migrate import head_revision
    from cloud_service.models import Base

    src, wheels, site, work = (tmp_path / n for n in ("src", "wheels", "site", "work"))
    _copy_sources(src)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    res = subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                          "-w", str(wheels)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(wheels.glob("hadmc-*.whl"))
    res = subprocess.run([*pip, "install", "-q", "--no-deps", "--no-compile", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]

    work.mkdir()  # empty: neither the checkout nor an alembic.ini is reachable from here
    db = work / "hadmc.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HADMC_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), HADMC_DATABASE_URL=f"sqlite:///{db}")
    where = subprocess.run([sys.executable, "-c", "import cloud_service.migrate as m; "
                            "print(m.MIGRATIONS_DIR)"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(site / "cloud_service" / "migrations"), where.stderr
    res = subprocess.run([str(site / "bin" / "hadmc"), "db", "upgrade"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type = 'table'")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert tables - {"alembic_version"} == set(Base.metadata.tables)
    assert revision == head_revision()
    assert {p.name for p in work.iterdir()} <= {"hadmc.db", "hadmc.db-wal", "hadmc.db-shm"}
