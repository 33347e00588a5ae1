"""An ONNX model from outside the zoo, uploaded over REST, compressed by a real ``hadmc
worker`` (Celery on Redis, PostgreSQL): the dataset is fitted to the model's input and the
job yields a version whose report and model say so."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

from cloud_service import migrate
from cloud_service.app import create_app
from cloud_service.settings import Settings
from tests.cloud_service.conftest import (
    create_database,
    drop_database,
    make_settings,
    new_user_token,
)
from tests.cloud_service.test_worker import start_worker, stop, wait_job

OCTET = {"Content-Type": "application/octet-stream"}
#: Every stage once (the converted graph is pruned and distilled), in seconds. Pruning is uniform: a
#: latency-guided rung on layers of a few microseconds, timed on this machine, may find
#: nothing worth removing (so whether the stage runs would depend on the CPU).
FAST = {"prune": {"uniform_ratio": 0.5, "calib_batches": 2},
        "distill": {"epochs": 1, "samples": 256, "batch_size": 64},
        "quantize": {"keep_ladder": [0], "calib_samples": 64, "sensitivity_samples": 32},
        "measure": {"runs": 5, "warmup": 2, "in_graph": False}, "max_candidates": 1}


class ColourNet(nn.Module):
    """Not from the zoo: 3x12x12 colour images in, 10 scores out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv(x)))))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def wsettings(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Settings]:
    url = create_database()
    try:
        migrate.upgrade(url)
        yield make_settings(tmp_path_factory.mktemp("onnx-worker"), database_url=url,
                            broker_url=redis_url, queue=f"hadmc_o_{uuid.uuid4().hex[:8]}",
                            job_heartbeat_seconds=0.5)
    finally:
        drop_database(url)


def _onnx(path: Path) -> Path:
    torch.manual_seed(0)
    torch.onnx.export(ColourNet().eval(), (torch.zeros(1, 3, 12, 12),), str(path),
                      dynamo=False, input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}})
    return path


@pytest.mark.slow
def test_uploaded_onnx_model_is_compressed_by_a_real_worker(wsettings: Settings,
                                                            tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {new_user_token(wsettings)}"}
    log = tmp_path / "worker.log"
    with TestClient(create_app(wsettings)) as client:
        r = client.post("/v1/models", params={"name": "colour", "format": "onnx"},
                        content=_onnx(tmp_path / "colour.onnx").read_bytes(),
                        headers={**auth, **OCTET})
        assert r.status_code == 201, r.text
        model = r.json()
        data = client.post("/v1/datasets", json={"builtin": "digits"}, headers=auth).json()
        r = client.post("/v1/jobs", headers=auth, json={
            "model_id": model["id"], "dataset_id": data["id"], "profile": "x86-avx2",
            "config": FAST, "constraints": {"max_accuracy_drop": 100}})
        assert r.status_code == 202, r.text
        worker = start_worker(wsettings, log)
        try:
            done = wait_job(client, auth, r.json()["id"], {"succeeded", "failed"}, 240, log)
        finally:
            stop(worker)
        assert done["state"] == "succeeded", done
        note = ("dataset images 1x8x8 resized to 1x12x12 and replicated to 3 channels to fit "
                "the model's input 3x12x12")
        assert note in done["log_tail"]
        ver = client.get(f"/v1/versions/{done['version_id']}", headers=auth).json()
        assert ver["model_id"] == model["id"] and ver["number"] == 1
        assert ver["summary"]["dataset_fit"] == note
        report = client.get(f"/v1/versions/{ver['id']}/report", headers=auth).json()
        onnx_bytes = client.get(f"/v1/versions/{ver['id']}/model.onnx", headers=auth).content
    assert report["model"]["kind"] == "onnx" and report["model"]["converted"] is True
    assert report["arch"] is None and report["dataset"] == "digits"
    assert {"prune", "distill", "quantize"} <= set(report["stages"]["ran"])
    assert report["compressed"]["size_bytes"] == len(onnx_bytes) == ver["onnx_size"]
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((2, 3, 12, 12), np.float32)})
    assert out[0].shape == (2, 10)
