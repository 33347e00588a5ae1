"""Predicted against measured latency of a version: the report's prediction and its
source beside what devices measured, over the API (real PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from cloud_service.db import session_scope
from cloud_service.models import ModelVersion
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore
from tests.cloud_service.conftest import enroll


def make_version(settings: Settings, model_id: int, number: int, report: dict) -> int:
    store = ArtifactStore(settings.artifact_dir)
    onnx_hash, size = store.put_bytes(b"onnx bytes of version %d" % number)
    report_hash, _ = store.put_bytes(json.dumps(report).encode())
    with session_scope(settings.database_url) as s:
        row = ModelVersion(model_id=model_id, number=number, profile="x86-avx2",
                           onnx_hash=onnx_hash, onnx_size=size, report_hash=report_hash,
                           summary={}, constraints_met=True)
        s.add(row)
        s.flush()
        return row.id


def report(client: TestClient, dev: dict, version_id: int, **body: object) -> None:
    r = client.post(f"/v1/devices/{dev['device_id']}/updates",
                    headers={"Authorization": f"Bearer {dev['credential']}"},
                    json={"version_id": version_id, "ok": True, "phase": "done", **body})
    assert r.status_code == 201, r.text


@pytest.fixture
def version_id(settings: Settings, tiny_model: dict) -> int:
    rep = {"latency_source": "estimated", "latency_model": "roofline",
           "compressed": {"latency_ms": 2.0}}
    with session_scope(settings.database_url) as s:
        top = max([v.number for v in s.query(ModelVersion).filter_by(
            model_id=tiny_model["id"])] or [0])
    return make_version(settings, tiny_model["id"], top + 1, rep)


def test_predicted_with_source_against_median_of_devices(client: TestClient, auth: dict,
                                                         version_id: int) -> None:
    before = client.get(f"/v1/versions/{version_id}", headers=auth).json()["latency"]
    assert before == {"predicted_ms": 2.0, "predicted_source": "estimated",
                      "predicted_model": "roofline", "measured_p50_ms": None,
                      "measured_p95_ms": None, "devices": 0, "error_pct": None,
                      "per_device": []}
    a, b, c = (enroll(client, auth, f"lat-{i}") for i in range(3))
    report(client, a, version_id, p50_ms=9.0, p95_ms=12.0)   # superseded below
    report(client, a, version_id, p50_ms=2.4, p95_ms=2.9)
    report(client, b, version_id, p50_ms=2.6, p95_ms=3.1)
    report(client, c, version_id, p50_ms=2.5, p95_ms=3.3)
    # a failure and a probation report without timings do not count
    report(client, c, version_id, ok=False, phase="health", reason="crashed")
    lat = client.get(f"/v1/versions/{version_id}", headers=auth).json()["latency"]
    assert lat["predicted_ms"] == 2.0 and lat["predicted_source"] == "estimated"
    assert lat["devices"] == 3
    assert lat["measured_p50_ms"] == pytest.approx(2.5)
    assert lat["measured_p95_ms"] == pytest.approx(3.1)
    assert lat["error_pct"] == pytest.approx(-20.0)   # (2.0 - 2.5) / 2.5
    assert [d["p50_ms"] for d in lat["per_device"]] == [2.4, 2.6, 2.5]
    # the device itself may read it too
    own = client.get(f"/v1/versions/{version_id}",
                     headers={"Authorization": f"Bearer {a['credential']}"})
    assert own.status_code == 200 and own.json()["latency"]["devices"] == 3


def test_published_upload_has_no_prediction(client: TestClient, auth: dict,
                                            settings: Settings, tiny_model: dict,
                                            version_id: int) -> None:
    """A version whose report has no compressed latency (a published ONNX file) shows the
    devices' figures without a prediction or an error."""
    with session_scope(settings.database_url) as s:
        number = s.get(ModelVersion, version_id).number + 1
    vid = make_version(settings, tiny_model["id"], number, {"schema": "hadmc.report/1"})
    dev = enroll(client, auth, "lat-upload")
    report(client, dev, vid, p50_ms=1.5, p95_ms=1.7)
    lat = client.get(f"/v1/versions/{vid}", headers=auth).json()["latency"]
    assert lat["predicted_ms"] is None and lat["predicted_source"] is None
    assert lat["measured_p50_ms"] == 1.5 and lat["error_pct"] is None


def test_list_leaves_latency_out(client: TestClient, auth: dict, tiny_model: dict,
                                 version_id: int) -> None:
    rows = client.get("/v1/versions", params={"model_id": tiny_model["id"]},
                      headers=auth).json()["data"]
    assert rows and all(r["latency"] is None for r in rows)
