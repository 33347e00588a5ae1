"""A real ``hadmc worker`` (Celery on Redis) runs a tiny real compression; killing the
worker mid-job makes the reconciler retry it on another worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service import migrate
from cloud_service.app import create_app
from cloud_service.settings import Settings
from cloud_service.tasks.reconcile import reconcile
from tests.cloud_service.conftest import (
    TINY_CONFIG,
    create_database,
    drop_database,
    make_settings,
    new_user_token,
    upload_model,
)

HADMC = str(Path(sys.executable).parent / "hadmc")


@pytest.fixture(scope="module")
def wsettings(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Settings]:
    url = create_database()
    try:
        migrate.upgrade(url)
        yield make_settings(tmp_path_factory.mktemp("worker"), database_url=url,
                            broker_url=redis_url, queue=f"hadmc_w_{uuid.uuid4().hex[:8]}",
                            job_stale_seconds=4, job_heartbeat_seconds=0.5,
                            requeue_grace_seconds=0)
    finally:
        drop_database(url)


def start_worker(settings: Settings, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HADMC_DATABASE_URL": settings.database_url,
           "HADMC_BROKER_URL": str(settings.broker_url), "HADMC_QUEUE": settings.queue,
           "HADMC_ARTIFACT_DIR": str(settings.artifact_dir),
           "HADMC_JOB_HEARTBEAT_SECONDS": str(settings.job_heartbeat_seconds),
           "HADMC_JOB_STALE_SECONDS": str(settings.job_stale_seconds)}
    return subprocess.Popen([HADMC, "worker", "--concurrency", "1"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_job(client: TestClient, auth: dict, job_id: int, states: set[str], timeout: float,
             log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        if job["state"] in states:
            return job
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log.exists() else ""
    pytest.fail(f"job {job_id} did not reach {states} in {timeout}s: {job}\nworker log:\n{tail}")


@pytest.mark.slow
def test_killed_worker_job_is_retried_and_completes(wsettings: Settings, tiny_weights: Path,
                                                    tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {new_user_token(wsettings)}"}
    log = tmp_path / "worker.log"
    with TestClient(create_app(wsettings)) as client:
        model = upload_model(client, auth, tiny_weights)
        data = client.post("/v1/datasets", json={"builtin": "digits"}, headers=auth).json()
        job = client.post("/v1/jobs", headers=auth, json={
            "model_id": model["id"], "dataset_id": data["id"], "profile": "x86-avx2",
            "config": TINY_CONFIG, "constraints": {"max_accuracy_drop": 100}}).json()

        first = start_worker(wsettings, log)
        try:
            wait_job(client, auth, job["id"], {"running"}, 90, log)
        finally:
            stop(first, signal.SIGKILL)  # the whole worker, parent and child, dies at once
        time.sleep(wsettings.job_stale_seconds + 1)
        counts = reconcile(wsettings)
        assert counts["requeued_dead"] == 1
        retried = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
        assert retried["state"] == "queued" and "stopped sending heartbeats" in retried["error"]

        second = start_worker(wsettings, log)
        try:
            done = wait_job(client, auth, job["id"], {"succeeded", "failed"}, 200, log)
        finally:
            stop(second)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2 and done["version_id"] is not None
        assert done["stage"] == "done" and done["timings"]["baseline"] > 0
        assert "stage" in done["log_tail"]

        ver = client.get(f"/v1/versions/{done['version_id']}", headers=auth).json()
        assert ver["number"] == 1 and ver["model_id"] == model["id"]
        assert ver["summary"]["accuracy"] is not None
        report = client.get(f"/v1/versions/{ver['id']}/report", headers=auth).json()
        assert report["dataset"] == "digits"
        onnx_bytes = client.get(f"/v1/versions/{ver['id']}/model.onnx", headers=auth).content
    assert len(onnx_bytes) == ver["onnx_size"]
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    out = sess.run(None, {inp.name: np.zeros((1, 1, 8, 8), np.float32)})[0]
    assert out.shape == (1, 10)
