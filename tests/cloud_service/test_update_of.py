"""``POST /v1/jobs`` with ``update_of`` (real PostgreSQL): which versions a job may update,
and the runner continuing the updated version's model line with its plan kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_service.db import session_scope
from cloud_service.models import Job, ModelVersion
from cloud_service.settings import Settings
from tests.cloud_service.conftest import TINY_CONFIG, publish_onnx, upload_model


def _compressed_version(settings: Settings, model_id: int, dataset_id: int) -> int:
    """A version of ``model_id`` made by a (finished) job, as the runner stores one."""
    from cloud_service.services.versions import next_number

    with session_scope(settings.database_url) as s:
        job = Job(model_id=model_id, dataset_id=dataset_id, profile="x86-avx2", config={},
                  state="succeeded", timings={}, log_tail="")
        s.add(job)
        s.flush()
        ver = ModelVersion(model_id=model_id, job_id=job.id, profile="x86-avx2",
                           number=next_number(session=s, model_id=model_id),
                           onnx_hash="0" * 64, onnx_size=1, report_hash="0" * 64, summary={})
        s.add(ver)
        s.flush()
        return ver.id


def _submit(client: TestClient, auth: dict, model_id: int, dataset_id: int, **kw: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", headers=auth, json={
        "model_id": model_id, "dataset_id": dataset_id, "profile": "x86-avx2",
        "config": TINY_CONFIG, **kw})


@pytest.fixture(scope="module")
def line(client: TestClient, auth: dict, tiny_weights: Path, digits: dict,
         settings: Settings) -> dict:
    model = upload_model(client, auth, tiny_weights, name="line-a")
    return {"model": model, "version": _compressed_version(settings, model["id"],
                                                           digits["id"])}


def test_a_fresh_base_of_the_same_architecture_may_update_a_line(
        client: TestClient, auth: dict, tiny_weights: Path, digits: dict, line: dict) -> None:
    tuned = upload_model(client, auth, tiny_weights, name="line-a fine-tuned")
    r = _submit(client, auth, tuned["id"], digits["id"], update_of=line["version"],
                allow_restructure=True)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["update_of_id"] == line["version"] and job["allow_restructure"] is True
    got = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert got["update_of_id"] == line["version"]


def test_unknown_version_is_404(client: TestClient, auth: dict, line: dict,
                                digits: dict) -> None:
    r = _submit(client, auth, line["model"]["id"], digits["id"], update_of=987654)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "version 987654 does not exist" in r.json()["detail"]


def test_a_version_of_another_model_line_is_409(client: TestClient, auth: dict,
                                                tiny_weights: Path, digits: dict,
                                                settings: Settings, line: dict) -> None:
    other = upload_model(client, auth, tiny_weights, name="line-b")
    _compressed_version(settings, other["id"], digits["id"])  # line-b is a line of its own
    r = _submit(client, auth, other["id"], digits["id"], update_of=line["version"])
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert f"model line model-{line['model']['id']}" in r.json()["detail"]


def test_a_version_of_another_architecture_is_409(client: TestClient, auth: dict,
                                                  tmp_path: Path, digits: dict,
                                                  line: dict) -> None:
    from hadmc_core.models import ArchSpec, build_model, save_weights

    spec = ArchSpec("resnet18", 1, 10, "small", 0.25)
    path = tmp_path / "r.safetensors"
    save_weights(build_model(spec), path, spec)
    other = upload_model(client, auth, path, name="resnet", arch="resnet18", width=0.25)
    r = _submit(client, auth, other["id"], digits["id"], update_of=line["version"])
    assert r.status_code == 409, r.text
    assert "another architecture" in r.json()["detail"]
    assert "'densenet' vs 'resnet18'" in r.json()["detail"]


def test_a_published_version_has_no_plan_409(client: TestClient, auth: dict, digits: dict,
                                             tmp_path: Path) -> None:
    import numpy as np

    from tests.cloud_service.conftest import make_onnx

    path = make_onnx(tmp_path / "m.onnx", np.ones((4, 2), np.float32))
    model = client.post("/v1/models", params={"name": "o", "format": "onnx"},
                        content=path.read_bytes(),
                        headers={**auth, "Content-Type": "application/octet-stream"}).json()
    ver = publish_onnx(client, auth, model["id"], path.read_bytes())
    r = _submit(client, auth, model["id"], digits["id"], update_of=ver["id"])
    assert r.status_code == 409 and "no plan to keep" in r.json()["detail"]


def test_allow_restructure_alone_is_422(client: TestClient, auth: dict, line: dict,
                                        digits: dict) -> None:
    r = _submit(client, auth, line["model"]["id"], digits["id"], allow_restructure=True)
    assert r.status_code == 422 and "needs update_of" in r.json()["detail"]


@pytest.mark.slow
def test_the_runner_keeps_the_plan_and_continues_the_line(tmp_path: Path,
                                                          tiny_weights: Path) -> None:
    """Two real compressions (SQLite): v1 of line A, then a job on a new base with
    update_of v1 stores v2 in line A, with the report saying the plan was kept."""
    from cloud_service import migrate
    from cloud_service.models import Dataset, Model
    from cloud_service.storage import ArtifactStore
    from cloud_service.tasks.runner import execute_job
    from tests.cloud_service.conftest import make_settings

    settings = make_settings(tmp_path)
    migrate.upgrade(settings.database_url)
    store = ArtifactStore(settings.artifact_dir)
    digest, size = store.ingest_file(tiny_weights)
    arch = {"arch": "densenet", "in_channels": 1, "num_classes": 10, "stem": "small",
            "width": 0.5}
    with session_scope(settings.database_url) as s:
        a = Model(name="a", format="safetensors", artifact_hash=digest, size_bytes=size,
                  arch=arch, details={})
        b = Model(name="a2", format="safetensors", artifact_hash=digest, size_bytes=size,
                  arch=arch, details={})
        data = Dataset(name="digits", builtin="digits", details={})
        s.add_all([a, b, data])
        s.flush()
        ids = a.id, b.id, data.id

    def run(model_id: int, update_of: int | None) -> ModelVersion:
        with session_scope(settings.database_url) as s:
            job = Job(model_id=model_id, dataset_id=ids[2], profile="x86-avx2",
                      config=TINY_CONFIG, state="queued", timings={}, log_tail="",
                      update_of_id=update_of)
            s.add(job)
            s.flush()
            job_id = job.id
        execute_job(job_id, settings)
        with session_scope(settings.database_url) as s:
            row = s.get(Job, job_id)
            assert row is not None and row.state == "succeeded", (row.state, row.error)
            ver = s.get(ModelVersion, row.version_id)
            assert ver is not None
            s.expunge(ver)
            return ver

    v1 = run(ids[0], None)
    v2 = run(ids[1], v1.id)
    assert (v2.model_id, v2.number) == (ids[0], 2)  # line A continues
    r1 = json.loads(store.path(v1.report_hash).read_bytes())
    r2 = json.loads(store.path(v2.report_hash).read_bytes())
    assert r2["update"]["of"] == f"version {v1.id}" and r2["update"]["structure"] == "reused"
    assert [(d["layer"], d["kept_out_channels"]) for d in r1["layers"]] == \
        [(d["layer"], d["kept_out_channels"]) for d in r2["layers"]]
    # Precisions of the layers both reports tie to a graph node (a layer the report could
    # not map to a node is labelled fp32 without saying what ran).
    mapped = [(a["layer"], a["precision"], b["precision"])
              for a, b in zip(r1["layers"], r2["layers"], strict=True)
              if a["onnx_node"] and b["onnx_node"]]
    assert mapped and all(p1 == p2 for _, p1, p2 in mapped), mapped
