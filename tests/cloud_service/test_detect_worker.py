"""A detect job end to end over REST with a real ``hadmc worker`` (Celery on Redis,
PostgreSQL): a tiny trained yolo-n (safetensors) and a COCO archive of scenes are uploaded,
the job compresses with every stage once, and the version is a detector with NMS in its
graph, mAP figures in its report and a probe of one image in 0..1."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from cloud_service import migrate
from cloud_service.app import create_app
from cloud_service.settings import Settings
from hadmc_core.data.detection import load_detection
from hadmc_core.models import ArchSpec, save_weights
from hadmc_core.models.yolo import YOLO
from hadmc_core.train import TrainConfig, fit_detector
from tests.cloud_service.conftest import (
    create_database,
    drop_database,
    make_settings,
    new_user_token,
)
from tests.cloud_service.test_detect_datasets import make_zip
from tests.cloud_service.test_worker import start_worker, stop, wait_job
from tests.hadmc_core.test_detection_e2e import FAST, SIDE, write_coco

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def wsettings(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Settings]:
    url = create_database()
    try:
        migrate.upgrade(url)
        yield make_settings(tmp_path_factory.mktemp("detect-worker"), database_url=url,
                            broker_url=redis_url, queue=f"hadmc_d_{uuid.uuid4().hex[:8]}",
                            job_heartbeat_seconds=0.5)
    finally:
        drop_database(url)


def _inputs(root: Path) -> tuple[bytes, bytes]:
    """(safetensors of a briefly trained yolo-n, the COCO folder as a zip archive)."""
    coco = write_coco(root / "scenes")
    data = load_detection(str(coco), SIDE)
    torch.manual_seed(0)
    model = YOLO(3, data.num_classes, width=0.25)
    fit_detector(model, data.train, TrainConfig(epochs=2, batch_size=16, lr=0.01))
    path = root / "yolo-n.safetensors"
    save_weights(model.eval(), path, ArchSpec("yolo-n", 3, data.num_classes, "small", 0.25))
    members = {str(p.relative_to(coco)): p.read_bytes() for p in coco.rglob("*") if p.is_file()}
    return path.read_bytes(), make_zip(members)


@pytest.mark.slow
def test_detect_job_runs_on_a_real_worker(wsettings: Settings, tmp_path: Path) -> None:
    weights, archive = _inputs(tmp_path)
    auth = {"Authorization": f"Bearer {new_user_token(wsettings)}"}
    log = tmp_path / "worker.log"
    with TestClient(create_app(wsettings)) as client:
        r = client.post("/v1/models", params={"name": "yolo", "format": "safetensors",
                                              "arch": "yolo-n", "in_channels": 3,
                                              "num_classes": 10, "width": 0.25},
                        content=weights, headers={**auth, **OCTET})
        assert r.status_code == 201, r.text
        model = r.json()
        r = client.post("/v1/datasets/upload", params={"name": "scenes", "kind": "coco"},
                        content=archive, headers={**auth, **OCTET})
        assert r.status_code == 201, r.text
        r = client.post("/v1/jobs", headers=auth, json={
            "model_id": model["id"], "dataset_id": r.json()["id"], "profile": "x86-avx2",
            "task": "detect", "config": FAST, "constraints": {"max_map_drop": 100}})
        assert r.status_code == 202, r.text
        assert r.json()["task"] == "detect"
        worker = start_worker(wsettings, log)
        try:
            done = wait_job(client, auth, r.json()["id"], {"succeeded", "failed"}, 480, log)
        finally:
            stop(worker)
        assert done["state"] == "succeeded", (done, log.read_text()[-3000:])
        ver = client.get(f"/v1/versions/{done['version_id']}", headers=auth).json()
        assert ver["task"] == "detect"
        report = client.get(f"/v1/versions/{ver['id']}/report", headers=auth).json()
        onnx_bytes = client.get(f"/v1/versions/{ver['id']}/model.onnx", headers=auth).content
        probe = client.get(f"/v1/versions/{ver['id']}/probe", headers=auth)
    assert report["task"] == "detect" and {"prune", "distill", "quantize"} <= set(
        report["stages"]["ran"])
    for name in ("baseline", "compressed"):
        m = report["metrics"][name]
        assert 0.0 <= m["map50_95"] <= m["map50"] <= 100.0
    graph = onnx.load_from_string(onnx_bytes)
    assert "NonMaxSuppression" in {n.op_type for n in graph.graph.node}
    assert [o.name for o in graph.graph.output] == ["detections"]
    assert probe.status_code == 200, probe.text
    with np.load(io.BytesIO(probe.content)) as z:
        assert z["inputs"].shape == (1, 3, SIDE, SIDE) and z["inputs"].min() >= 0
        assert z["inputs"].max() <= 1 and z["outputs"].ndim == 2
