"""The job runner with a stand-in for ``hadmc_core.compress.compress`` (fast, SQLite):
progress on the row, version numbering, cancel, failures."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from cloud_service import migrate
from cloud_service.db import session_scope
from cloud_service.models import Dataset, Job, Model, ModelVersion
from cloud_service.services.jobs import cancel_job
from cloud_service.settings import Settings
from cloud_service.tasks.runner import execute_job
from tests.cloud_service.conftest import make_settings


@pytest.fixture
def env(tmp_path: Path, tiny_weights: Path) -> tuple[Settings, int]:
    from cloud_service.storage import ArtifactStore

    settings = make_settings(tmp_path, job_heartbeat_seconds=0.2)
    migrate.upgrade(settings.database_url)
    digest, size = ArtifactStore(settings.artifact_dir).ingest_file(tiny_weights)
    with session_scope(settings.database_url) as s:
        model = Model(name="m", format="safetensors", artifact_hash=digest, size_bytes=size,
                      arch={"arch": "densenet", "in_channels": 1, "num_classes": 10,
                            "stem": "small", "width": 0.5}, details={})
        data = Dataset(name="digits", builtin="digits", details={})
        s.add_all([model, data])
        s.flush()
        return settings, model.id


def _job(settings: Settings, model_id: int) -> int:
    with session_scope(settings.database_url) as s:
        job = Job(model_id=model_id, dataset_id=1, profile="x86-avx2", config={},
                  state="queued", timings={}, log_tail="")
        s.add(job)
        s.flush()
        return job.id


def _row(settings: Settings, job_id: int) -> Job:
    with session_scope(settings.database_url) as s:
        row = s.get(Job, job_id)
        assert row is not None
        return row


def fake_compress(steps: int = 3, delay: float = 0.0, error: BaseException | None = None,  # type: ignore[no-untyped-def]
                  onnx: bytes = b"onnx-bytes"):
    from hadmc_core.compress import CompressionResult

    def run(model, spec, data, profile, out_dir, cfg, progress, **kw: Any):  # type: ignore[no-untyped-def]
        for i in range(steps):
            progress("baseline", i, steps)
            time.sleep(delay)
        if error is not None:
            raise error
        out = Path(out_dir)
        out.mkdir(parents=True)
        (out / "model.onnx").write_bytes(onnx)
        rep = {"summary": {"speedup": 1.5}, "compressed": {"accuracy": 90.0,
                                                          "latency_ms": 1.0, "size_bytes": 10}}
        (out / "report.json").write_text(json.dumps(rep))
        return CompressionResult(out, rep, True, "all constraints met")

    return run


def test_success_creates_numbered_versions(env: tuple[Settings, int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    settings, model_id = env
    monkeypatch.setattr("hadmc_core.compress.compress", fake_compress())
    first, second = _job(settings, model_id), _job(settings, model_id)
    assert execute_job(first, settings) == "succeeded"
    assert execute_job(second, settings) == "succeeded"
    assert execute_job(first, settings) == "skipped"  # a duplicate message is harmless
    job = _row(settings, second)
    assert job.stage == "done" and job.attempts == 1 and job.done == 2 and job.total == 3
    assert "stage baseline started" in job.log_tail
    with session_scope(settings.database_url) as s:
        numbers = sorted(v.number for v in s.query(ModelVersion).all())
        ver = s.get(ModelVersion, job.version_id)
        assert ver is not None and ver.summary["speedup"] == 1.5
    assert numbers == [1, 2]


def test_cancel_while_running(env: tuple[Settings, int],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings, model_id = env
    monkeypatch.setattr("hadmc_core.compress.compress", fake_compress(steps=200, delay=0.05))
    job_id = _job(settings, model_id)
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(execute_job(job_id, settings)))
    t.start()
    for _ in range(100):
        if _row(settings, job_id).state == "running":
            break
        time.sleep(0.05)
    with session_scope(settings.database_url) as s:
        assert cancel_job(session=s, job_id=job_id) is not None
    t.join(30)
    assert result == ["cancelled"]
    row = _row(settings, job_id)
    assert row.state == "cancelled" and row.version_id is None


@pytest.mark.parametrize("error,expected", [
    (__import__("hadmc_core.errors").errors.BudgetError("latency budget of 0.1 ms is "
                                                        "unreachable"), "latency budget"),
    (RuntimeError("boom"), "internal error: RuntimeError: boom"),
], ids=["hadmc-error", "crash"])
def test_failures_keep_the_reason(env: tuple[Settings, int], monkeypatch: pytest.MonkeyPatch,
                                  error: BaseException, expected: str) -> None:
    settings, model_id = env
    monkeypatch.setattr("hadmc_core.compress.compress", fake_compress(error=error))
    job_id = _job(settings, model_id)
    assert execute_job(job_id, settings) == "failed"
    row = _row(settings, job_id)
    assert row.state == "failed" and expected in (row.error or "")
    assert row.finished_at is not None


def test_attempts_are_limited(env: tuple[Settings, int], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, model_id = env
    monkeypatch.setattr("hadmc_core.compress.compress", fake_compress())
    job_id = _job(settings, model_id)
    with session_scope(settings.database_url) as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(attempts=settings.job_max_attempts))
    assert execute_job(job_id, settings) == "skipped"
    row = _row(settings, job_id)
    assert row.state == "failed" and "gave up after" in (row.error or "")


def test_success_publishes_manifest_and_probe(env: tuple[Settings, int], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from cloud_service.storage import ArtifactStore
    from tests.cloud_service.conftest import make_onnx

    settings, model_id = env
    w = np.ones((8, 2), np.float32)
    onnx = make_onnx(tmp_path / "m.onnx", w).read_bytes()
    monkeypatch.setattr("hadmc_core.compress.compress", fake_compress(onnx=onnx))
    job_id = _job(settings, model_id)
    assert execute_job(job_id, settings) == "succeeded"
    with session_scope(settings.database_url) as s:
        ver = s.get(ModelVersion, _row(settings, job_id).version_id)
        assert ver is not None and ver.manifest_hash and ver.probe_hash
        store = ArtifactStore(settings.artifact_dir)
        assert store.exists(ver.manifest_hash) and store.exists(ver.probe_hash)
