"""Shared by the service benchmarks: a throwaway PostgreSQL database and `hadmc serve`."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg


def create_database(pg: str, prefix: str) -> tuple[str, str]:
    """A new database on the server ``pg`` (``postgresql://user@host:port``): its name and
    SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, pg.replace("postgresql://", "postgresql+psycopg://") + "/" + name


def drop_database(pg: str, name: str) -> None:
    with psycopg.connect(pg + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def serve(env: dict[str, str], port: int, workers: int, log: Path) -> subprocess.Popen:
    """`hadmc serve` in its own session, once /readyz answers 200."""
    hadmc = str(Path(sys.executable).parent / "hadmc")
    proc = subprocess.Popen([hadmc, "serve", "--port", str(port), "--workers", str(workers)],
                            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit(f"hadmc serve did not become ready; see {log}")
