from __future__ import annotations

import json

import pytest
import redis
from fastapi.testclient import TestClient

from cloud_service.settings import Settings
from tests.cloud_service.conftest import TINY_CONFIG


def _submit(client: TestClient, auth: dict, model: dict, dataset: dict, **kw: object):  # type: ignore[no-untyped-def]
    body = {"model_id": model["id"], "dataset_id": dataset["id"], "profile": "x86-avx2",
            "config": TINY_CONFIG, **kw}
    return client.post("/v1/jobs", json=body, headers=auth)


def test_submit_stores_row_then_enqueues_id_only(client: TestClient, auth: dict,
                                                 tiny_model: dict, digits: dict,
                                                 settings: Settings) -> None:
    r = _submit(client, auth, tiny_model, digits, constraints={"max_accuracy_drop": 2})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and job["percent"] is None
    assert job["config"]["constraints"]["max_accuracy_drop"] == 2
    assert job["config"]["quantize"]["keep_ladder"] == [0]
    messages = [json.loads(m) for m in
                redis.Redis.from_url(settings.broker_url).lrange(settings.queue, 0, -1)]
    mine = [m for m in messages if m["headers"]["argsrepr"] == f"[{job['id']}]"]
    assert len(mine) == 1
    assert mine[0]["headers"]["task"] == "hadmc.compress_model_task"
    got = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert got["state"] == "queued"


@pytest.mark.parametrize("override,status,words", [
    ({"profile": "no-such-chip"}, 422, "unknown profile"),
    ({"profile": "/etc/passwd"}, 422, "unknown profile"),
    ({"config": {"prune": {"importance": "random"}}}, 422, "prune.importance"),
    ({"config": {"quantize": {"bogus": 1}}}, 422, "unknown option"),
    ({"constraints": {"max_accuracy_drop": "lots"}}, 422, "non-negative number"),
    ({"constraints": {"speed": 1}}, 422, "unknown constraint"),
    ({"config": {"constraints": {"validation_images": "lots"}}}, 422,
     "constraints.validation_images: 'auto', 'dataset' or a number"),
    ({"constraints": {"time_budget_s": 0}}, 422,
     "constraints.time_budget_s must be > 0 seconds"),
    ({"model_id": 999999}, 404, "does not exist"),
    ({"dataset_id": 999999}, 404, "does not exist"),
], ids=["unknown-profile", "path-as-profile", "bad-option-value", "unknown-option",
        "non-numeric-constraint", "unknown-constraint", "bad-validation-images",
        "zero-time-budget",
        "unknown-model", "unknown-dataset"])
def test_invalid_submissions(client: TestClient, auth: dict, tiny_model: dict, digits: dict,
                             override: dict, status: int, words: str) -> None:
    body = {"model_id": tiny_model["id"], "dataset_id": digits["id"], "profile": "x86-avx2",
            **override}
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_onnx_model_is_accepted_for_compression(client: TestClient, auth: dict, digits: dict,
                                                tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.cloud_service.test_api_models import _tiny_onnx

    onnx_path = _tiny_onnx(tmp_path / "m.onnx")
    model = client.post("/v1/models", params={"name": "o", "format": "onnx"},
                        content=onnx_path.read_bytes(),
                        headers={**auth, "Content-Type": "application/octet-stream"}).json()
    r = _submit(client, auth, model, digits)
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "queued" and r.json()["model_id"] == model["id"]


def test_malformed_json_is_422_problem(client: TestClient, auth: dict) -> None:
    r = client.post("/v1/jobs", content=b"{not json",
                    headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")


def test_cancel_queued_then_conflict(client: TestClient, auth: dict, tiny_model: dict,
                                     digits: dict) -> None:
    job = _submit(client, auth, tiny_model, digits).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 409 and "already cancelled" in r.json()["detail"]
    assert client.post("/v1/jobs/999999/cancel", headers=auth).status_code == 404


def test_list_filters_and_pagination(client: TestClient, auth: dict, tiny_model: dict,
                                     digits: dict) -> None:
    ids = [_submit(client, auth, tiny_model, digits).json()["id"] for _ in range(3)]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    cancelled = client.get("/v1/jobs", params={"state": "cancelled", "limit": 500},
                           headers=auth).json()
    assert ids[0] in [j["id"] for j in cancelled["data"]]
    assert all(j["state"] == "cancelled" for j in cancelled["data"])
    page1 = client.get("/v1/jobs", params={"model_id": tiny_model["id"], "limit": 2},
                       headers=auth).json()
    page2 = client.get("/v1/jobs", params={"model_id": tiny_model["id"], "limit": 2,
                                           "offset": 2}, headers=auth).json()
    assert len(page1["data"]) == 2 and page1["count"] == page2["count"] >= 3
    assert not {j["id"] for j in page1["data"]} & {j["id"] for j in page2["data"]}
    assert client.get("/v1/jobs", params={"state": "exploded"}, headers=auth).status_code == 422
