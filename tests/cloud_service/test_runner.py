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
                  onnx: bytes | None = None, seen: list | None = None):
    """A stand-in for compress() that writes ``onnx`` (a small real model by default) and a
    report; what it was given is appended to ``seen``."""
    from hadmc_core.compress import CompressionResult

    seen = [] if seen is None else seen

    def run(model, data, profile, out_dir, cfg, progress, **kw: Any):  # type: ignore[no-untyped-def]
        from hadmc_core.sources import LoadedModel

        assert isinstance(model, LoadedModel) and model.module is not None
        seen.append((model, data))
        for i in range(steps):
            progress("baseline", i, steps)
            time.sleep(delay)
        if error is not None:
            raise error
        out = Path(out_dir)
        out.mkdir(parents=True)
        if onnx is None:
            import numpy as np

            from tests.cloud_service.conftest import make_onnx

            make_onnx(out / "model.onnx", np.ones((8, 2), np.float32))
        else:
            (out / "model.onnx").write_bytes(onnx)
        rep = {"backend": "onnxruntime", "summary": {"speedup": 1.5},
               "compressed": {"accuracy": 90.0, "latency_ms": 1.0, "size_bytes": 10}}
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


def test_safetensors_model_is_loaded_as_its_built_in_architecture(
        env: tuple[Settings, int], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, model_id = env
    seen: list = []
    monkeypatch.setattr("hadmc_core.compress.compress", fake_compress(seen=seen))
    assert execute_job(_job(settings, model_id), settings) == "succeeded"
    (loaded, data), = seen
    assert loaded.kind == "zoo" and loaded.spec.arch == "densenet" and loaded.spec.width == 0.5
    assert loaded.input_shape == (1, 8, 8) and data.train.x.shape[1:] == (1, 8, 8)


def _onnx_model(settings: Settings, path: Path) -> int:
    from cloud_service.storage import ArtifactStore

    digest, size = ArtifactStore(settings.artifact_dir).ingest_file(path)
    with session_scope(settings.database_url) as s:
        model = Model(name="o", format="onnx", artifact_hash=digest, size_bytes=size,
                      arch=None, details={})
        s.add(model)
        s.flush()
        return model.id


def test_onnx_model_is_loaded_and_the_dataset_fitted_to_its_input(
        env: tuple[Settings, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tests.hadmc_core.factory_models import small_cnn

    settings, _ = env
    path = tmp_path / "rgb.onnx"
    torch.onnx.export(small_cnn(3, 10, 4).eval(), (torch.zeros(1, 3, 9, 9),), str(path),
                      dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    seen: list = []
    monkeypatch.setattr("hadmc_core.compress.compress", fake_compress(seen=seen))
    job_id = _job(settings, _onnx_model(settings, path))
    assert execute_job(job_id, settings) == "succeeded"
    (loaded, data), = seen
    assert loaded.kind == "onnx" and loaded.input_shape == (3, 9, 9)
    assert data.train.x.shape[1:] == (3, 9, 9) and data.test.x.shape[1:] == (3, 9, 9)
    note = ("dataset images 1x8x8 padded to 1x9x9 and replicated to 3 channels to fit the "
            "model's input 3x9x9")
    job = _row(settings, job_id)
    assert note in job.log_tail
    with session_scope(settings.database_url) as s:
        ver = s.get(ModelVersion, job.version_id)
        assert ver is not None and ver.summary["dataset_fit"] == note


def test_onnx_model_with_external_data_fails_the_job_before_anything_is_read(
        env: tuple[Settings, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row stored before uploads refused external data still never reads another file."""
    from tests.cloud_service.test_api_models import external_data_onnx

    settings, _ = env
    seen: list = []
    monkeypatch.setattr("hadmc_core.compress.compress", fake_compress(seen=seen))
    job_id = _job(settings, _onnx_model(settings, external_data_onnx(tmp_path, "../w.bin")))
    assert execute_job(job_id, settings) == "failed"
    assert "keeps its data in an external file" in (_row(settings, job_id).error or "")
    assert seen == []
