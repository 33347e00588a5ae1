"""The reconciler: lost messages are re-sent, dead workers' jobs are retried or failed."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from cloud_service import migrate
from cloud_service.db import session_scope, utcnow
from cloud_service.models import Dataset, Job, Model
from cloud_service.settings import Settings
from cloud_service.tasks.dispatch import enqueue_job
from cloud_service.tasks.reconcile import reconcile
from tests.cloud_service.conftest import create_database, drop_database, make_settings


@pytest.fixture
def fresh_db(redis_url: str) -> Iterator[str]:
    url = create_database()
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_database(url)


def _settings(tmp: Path, url: str, broker: str, **kw: object) -> Settings:
    return make_settings(tmp, database_url=url, broker_url=broker,
                         queue=f"hadmc_r_{uuid.uuid4().hex[:8]}", requeue_grace_seconds=0,
                         job_stale_seconds=60, job_max_attempts=2, **kw)


def _job(settings: Settings, **values: object) -> int:
    with session_scope(settings.database_url) as s:
        model = Model(name="m", format="safetensors", arch={"arch": "densenet"},
                      artifact_hash="0" * 64, size_bytes=1, details={})
        data = Dataset(name="digits", builtin="digits", details={})
        s.add_all([model, data])
        s.flush()
        job = Job(model_id=model.id, dataset_id=data.id, profile="x86-avx2", config={},
                  **{"state": "queued", "timings": {}, "log_tail": "", **values})
        s.add(job)
        s.flush()
        return job.id


def _get(settings: Settings, job_id: int) -> Job:
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _queued_ids(settings: Settings) -> list[int]:
    raw = redis.Redis.from_url(str(settings.broker_url)).lrange(settings.queue, 0, -1)
    return [json.loads(json.loads(m)["headers"]["argsrepr"])[0] for m in raw]


def test_lost_message_is_sent_again_once(tmp_path: Path, fresh_db: str, redis_url: str) -> None:
    settings = _settings(tmp_path, fresh_db, redis_url)
    kept, lost = _job(settings), _job(settings)
    assert enqueue_job(kept, settings) and enqueue_job(lost, settings)
    r = redis.Redis.from_url(redis_url)
    for raw in r.lrange(settings.queue, 0, -1):
        if json.loads(raw)["headers"]["argsrepr"] == f"[{lost}]":
            r.lrem(settings.queue, 1, raw)
    assert _queued_ids(settings) == [kept]
    assert reconcile(settings)["reenqueued"] == 1
    assert sorted(_queued_ids(settings)) == sorted([kept, lost])
    assert reconcile(settings)["reenqueued"] == 0  # both messages are there now
    r.delete(settings.queue)


def test_dead_worker_job_is_retried_then_failed(tmp_path: Path, fresh_db: str,
                                                redis_url: str) -> None:
    settings = _settings(tmp_path, fresh_db, redis_url)
    old = utcnow() - timedelta(minutes=5)
    retry = _job(settings, state="running", attempts=1, heartbeat_at=old, worker="w1")
    give_up = _job(settings, state="running", attempts=2, heartbeat_at=old, worker="w2")
    alive = _job(settings, state="running", attempts=1, heartbeat_at=utcnow(), worker="w3")
    counts = reconcile(settings)
    assert counts["requeued_dead"] == 1 and counts["failed_dead"] == 1
    assert _get(settings, retry).state == "queued" and retry in _queued_ids(settings)
    failed = _get(settings, give_up)
    assert failed.state == "failed"
    assert "w2 stopped sending heartbeats; gave up after 2 attempts" in (failed.error or "")
    assert _get(settings, alive).state == "running"
    redis.Redis.from_url(redis_url).delete(settings.queue)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(port: int, tmp: Path) -> subprocess.Popen:
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("could not start a private redis-server for the restart test")


def test_redis_restart_loses_no_job(tmp_path: Path, fresh_db: str) -> None:
    """Redis here keeps nothing on disk: after a restart the reconciler re-sends."""
    port = _free_port()
    server = _redis_server(port, tmp_path)
    settings = _settings(tmp_path, fresh_db, f"redis://127.0.0.1:{port}/0")
    try:
        job = _job(settings)
        assert enqueue_job(job, settings)
        assert _queued_ids(settings) == [job]
        server.terminate()
        server.wait(10)
        with session_scope(settings.database_url) as s:  # make it old enough to requeue
            s.execute(update(Job).where(Job.id == job)
                      .values(enqueued_at=utcnow() - timedelta(minutes=1)))
        assert not enqueue_job(_job(settings), settings)  # broker down: row kept, not sent
        server = _redis_server(port, tmp_path)
        assert _queued_ids(settings) == []
        counts = reconcile(settings)
        assert counts["reenqueued"] == 2
        assert sorted(_queued_ids(settings)) == [job, job + 1]
    finally:
        server.terminate()
        server.wait(10)
