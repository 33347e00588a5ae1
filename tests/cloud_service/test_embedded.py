"""``hadmc serve`` alone (SQLite, in-process worker) over real HTTP on loopback, and the
``hadmc db`` / ``token`` commands."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

HADMC = str(Path(sys.executable).parent / "hadmc")
ADMIN = "embedded-test-admin-token-0123456789"
FAST_CONFIG = {"prune": {"enabled": False}, "distill": {"enabled": False},
               "quantize": {"enabled": False}, "measure": {"runs": 5, "warmup": 2}}


def _env(tmp: Path, defaults: bool = False) -> dict[str, str]:
    """The environment of ``hadmc`` in ``tmp``; ``defaults``: every path left at its
    default (relative to the working directory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADMC_")}
    env["HADMC_ADMIN_TOKEN"] = ADMIN
    if not defaults:
        env.update({"HADMC_DATABASE_URL": f"sqlite:///{tmp / 'hadmc.db'}",
                    "HADMC_ARTIFACT_DIR": str(tmp / "artifacts"),
                    "HADMC_SIGNING_KEY_FILE": str(tmp / "signing.key")})
    return env


def _run(tmp: Path, *args: str, defaults: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([HADMC, *args], env=_env(tmp, defaults), capture_output=True,
                          text=True, timeout=120, cwd=tmp)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp: Path, defaults: bool = False, workers: int = 1) -> None:
        self.port, self.log = _port(), tmp / "serve.log"
        self.proc = subprocess.Popen([HADMC, "serve", "--port", str(self.port),
                                      "--workers", str(workers)],
                                     env=_env(tmp, defaults), cwd=tmp,
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        pytest.fail(f"hadmc serve did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)


@pytest.mark.parametrize(("defaults", "workers"), [(False, 1), (True, 1), (True, 3)],
                         ids=["configured", "defaults", "defaults-3-workers"])
def test_serve_creates_and_migrates_the_embedded_database(tmp_path: Path, defaults: bool,
                                                          workers: int) -> None:
    """A fresh directory: no `hadmc db upgrade` first; serve makes the SQLite file itself,
    once, before its worker processes start."""
    assert _run(tmp_path, "db", "current", defaults=defaults).returncode == 1
    server = Server(tmp_path, defaults=defaults, workers=workers)
    try:
        for _ in range(3 * workers):  # new connections, spread over the workers
            assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
    finally:
        server.stop()
    log = server.log.read_text()
    assert log.count("migrated the SQLite database from revision (empty)") == 1, log
    assert "Traceback" not in log, log
    res = _run(tmp_path, "db", "current", defaults=defaults)
    assert res.returncode == 0, res.stdout
    current, head = (line.split()[1] for line in res.stdout.splitlines()[:2])
    assert current == head


def test_serve_migrates_an_old_embedded_database(tmp_path: Path) -> None:
    from cloud_service import migrate

    migrate.upgrade(_env(tmp_path)["HADMC_DATABASE_URL"], "0001")
    server = Server(tmp_path)
    server.stop()
    assert "migrated the SQLite database from revision 0001 to" in server.log.read_text()
    assert _run(tmp_path, "db", "current").returncode == 0


def test_serve_refuses_an_outdated_postgres_schema(tmp_path: Path) -> None:
    """A shared database is never migrated behind its operator's back."""
    from cloud_service import migrate
    from tests.cloud_service.conftest import create_database, drop_database

    url = create_database()
    try:
        migrate.upgrade(url, "0001")
        env = {**_env(tmp_path), "HADMC_DATABASE_URL": url}
        res = subprocess.run([HADMC, "serve", "--port", str(_port())], env=env,
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert "is at revision 0001" in res.stderr and "run `hadmc db upgrade`" in res.stderr
        res = subprocess.run([HADMC, "token", "create"], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
        assert res.returncode == 2 and "run `hadmc db upgrade`" in res.stderr
        res = subprocess.run([HADMC, "db", "current"], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
        assert res.returncode == 1 and "current: 0001" in res.stdout
    finally:
        drop_database(url)


def test_token_create_in_a_fresh_directory(tmp_path: Path) -> None:
    res = _run(tmp_path, "token", "create")
    assert res.returncode == 0 and res.stdout.strip().startswith("hadmc_u_"), res.stderr
    assert _run(tmp_path, "db", "current").returncode == 0


@pytest.mark.slow
def test_embedded_server_runs_a_job_and_survives_restart(tmp_path: Path,
                                                         tiny_weights: Path) -> None:
    assert _run(tmp_path, "db", "upgrade").returncode == 0
    token = _run(tmp_path, "token", "create", "--user", "bob").stdout.strip()
    assert token.startswith("hadmc_u_")
    auth = {"Authorization": f"Bearer {token}"}
    server = Server(tmp_path)
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as c:
            model = c.post("/v1/models", params={"name": "t", "arch": "densenet", "width": 0.5},
                           content=tiny_weights.read_bytes(),
                           headers={"Content-Type": "application/octet-stream"}).json()
            data = c.post("/v1/datasets", json={"builtin": "digits"}).json()
            job = c.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": data["id"],
                                           "profile": "x86-avx2", "config": FAST_CONFIG})
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                state = c.get(f"/v1/jobs/{job_id}").json()
                if state["state"] in ("succeeded", "failed"):
                    break
                time.sleep(0.5)
            assert state["state"] == "succeeded", (state, server.log.read_text()[-2000:])
            assert (tmp_path / "signing.key").stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()
    server = Server(tmp_path)  # everything persisted
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=server.url, headers=admin, timeout=30) as c:
            again = c.get(f"/v1/jobs/{job_id}").json()
            assert again["state"] == "succeeded" and again["version_id"] == state["version_id"]
            r = c.get(f"/v1/versions/{again['version_id']}/model.onnx",
                      headers={"Range": "bytes=0-15"})
            assert r.status_code == 206 and len(r.content) == 16
    finally:
        server.stop()


def test_publish_on_the_embedded_defaults_from_a_fresh_directory(tmp_path: Path) -> None:
    """Every path at its relative default (``./hadmc.db``, ``hadmc-artifacts``,
    ``hadmc-signing.key``): publishing and downloading a version work."""
    import numpy as np

    from tests.cloud_service.conftest import make_onnx

    assert _run(tmp_path, "db", "upgrade", defaults=True).returncode == 0
    onnx = make_onnx(tmp_path / "m.onnx", np.ones((4, 2), np.float32)).read_bytes()
    server = Server(tmp_path, defaults=True)
    octet = {"Content-Type": "application/octet-stream"}
    try:
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"Bearer {ADMIN}"}) as c:
            model = c.post("/v1/models", params={"name": "m", "format": "onnx"},
                           content=onnx, headers=octet)
            assert model.status_code == 201, model.text
            version = c.post(f"/v1/models/{model.json()['id']}/versions",
                             params={"profile": "x86-avx2"}, content=onnx, headers=octet)
            assert version.status_code == 201, (version.text, server.log.read_text()[-2000:])
            got = c.get(f"/v1/versions/{version.json()['id']}/model.onnx")
            assert got.status_code == 200 and got.content == onnx
            assert c.get(f"/v1/versions/{version.json()['id']}/manifest").status_code == 200
    finally:
        server.stop()
    assert (tmp_path / "hadmc-artifacts" / "objects").is_dir()
    assert (tmp_path / "hadmc.db").is_file()
