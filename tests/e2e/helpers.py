"""Shared by the end-to-end tests: a throwaway PostgreSQL database, a real ``hadmc serve``
on a free loopback port, and real ``hadmc-agent`` processes."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.store import AgentState, Store

ROOT = Path(__file__).resolve().parents[2]
PG = os.environ.get("HADMC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
HADMC = [sys.executable, "-m", "hadmc_core.cli"]
OCTET = {"Content-Type": "application/octet-stream"}


def local_profile() -> str:
    """The built-in profile a version must name to fit the agents on this machine."""
    import platform

    return "arm64-generic" if platform.machine() in ("aarch64", "arm64") else "x86-avx2"


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 60.0,
             every: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    import psycopg

    name = f"hadmc_e2e_{uuid.uuid4().hex[:10]}"
    dsn = PG.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {dsn} ({e})", pytrace=False)
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG}/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    url: str
    admin: httpx.Client
    proc: subprocess.Popen[bytes]
    log: Path
    octet: dict[str, str]
    artifacts: Path


def server_env(database: str, tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HADMC_ENVIRONMENT": "dev", "HADMC_DATABASE_URL": database,
            "HADMC_ARTIFACT_DIR": str(tmp / "artifacts"),
            "HADMC_SIGNING_KEY_FILE": str(tmp / "signing.key"),
            "HADMC_RECONCILE_INTERVAL_SECONDS": "0", "PYTHONPATH": str(ROOT), **extra}


def start_server(env: dict[str, str], tmp: Path) -> Server:
    """``hadmc db upgrade`` then ``hadmc serve`` on a free port, with an admin client."""
    token = secrets.token_urlsafe(24)
    env = {**env, "HADMC_ADMIN_TOKEN": token}
    subprocess.run([*HADMC, "db", "upgrade"], env=env, check=True, cwd=ROOT,
                   capture_output=True, timeout=120)
    port = free_port()
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*HADMC, "serve", "--port", str(port)], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, "hadmc serve to answer", 60)
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                         timeout=120)
    return Server(url, admin, proc, log, OCTET, Path(env["HADMC_ARTIFACT_DIR"]))


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Agent:
    """A real ``hadmc-agent`` process with its own data directory."""

    def __init__(self, i: int, server: Server, token: str, root: Path,
                 **env: str) -> None:
        self.name, self.dir = f"agent-{i}", root / f"agent-{i}"
        self.log = root / f"agent-{i}.log"
        self.cmd = [sys.executable, "-m", "edge_agent", "--server", server.url,
                    "--enroll-token", token, "--data-dir", str(self.dir), "--name", self.name,
                    "--serve-port", "0"]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "HADMC_AGENT_POLL_SECONDS": "0.3",
                    "HADMC_AGENT_HEARTBEAT_SECONDS": "2", "HADMC_AGENT_REPORT_SECONDS": "0.3",
                    "HADMC_AGENT_SMOKE_RUNS": "5", "HADMC_AGENT_THREADS": "1",
                    "HADMC_AGENT_HEALTH_WINDOW_SECONDS": "0",
                    "HADMC_AGENT_LATENCY_TABLE": "true" if i == 0 else "false", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)

    def current(self) -> int | None:
        return Store(self.dir).current_vid()

    def state(self) -> AgentState:
        return Store(self.dir).load_state()

    def busy(self) -> bool:
        staging = self.dir / "staging"
        return staging.is_dir() and any(staging.iterdir())

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot exit
            stop(self.proc)


def ok(resp: httpx.Response, status: int = 200) -> Any:
    assert resp.status_code == status, f"{resp.request.method} {resp.request.url}: " \
                                       f"{resp.status_code} {resp.text[:500]}"
    return resp.json()


def rollout(s: Server, version_id: int, waves: list[int], **kw: Any) -> int:
    body = {"version_id": version_id, "selector": {"all": True}, "waves": waves,
            "min_devices_per_wave": 1, "success_threshold": 0.95, "max_failure_rate": 0.2,
            "max_latency_regression": 100.0, "wave_timeout_seconds": 60, **kw}
    return int(ok(s.admin.post("/v1/rollouts", json=body), 201)["id"])


def rollout_state(s: Server, rid: int) -> str:
    return str(ok(s.admin.get(f"/v1/rollouts/{rid}"))["state"])


def rollout_rows(s: Server, rid: int) -> dict[int, dict[str, Any]]:
    return {r["device_id"]: r for r in ok(s.admin.get(f"/v1/rollouts/{rid}/devices"))["data"]}
