"""Several models per device: a deployment per (device, model), each with its own version,
rollouts, holds and rollbacks; the desired state per model; agents that run one model
keep working unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.db import session_scope, utcnow
from cloud_service.services import fleet as fleet_svc
from cloud_service.settings import Settings
from tests.cloud_service.conftest import enroll, make_onnx, publish_onnx
from tests.cloud_service.rollout_helpers import (
    Dev,
    create,
    desired,
    report,
    rollout,
    run_tick,
    statuses,
)


@pytest.fixture(scope="module")
def two_models(client: TestClient, auth: dict, tiny_model: dict,
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """A detector (the conftest's model) and a classifier, two versions each."""
    tmp = tmp_path_factory.mktemp("deployments")
    w = np.random.default_rng(11).standard_normal((16, 8)).astype(np.float32)
    c = np.random.default_rng(12).standard_normal((8, 3)).astype(np.float32)
    out = {f"det{i}": publish_onnx(client, auth, tiny_model["id"],
                                   make_onnx(tmp / f"d{i}.onnx", w + i).read_bytes())
           for i in (1, 2)}
    first = make_onnx(tmp / "c1.onnx", c).read_bytes()
    r = client.post("/v1/models", params={"name": "classifier", "format": "onnx"},
                    content=first, headers={**auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    for i in (1, 2):
        out[f"cls{i}"] = publish_onnx(client, auth, r.json()["id"],
                                      make_onnx(tmp / f"c{i}.onnx", c + i).read_bytes())
    return out


@pytest.fixture(autouse=True)
def _close_rollouts(client: TestClient, auth: dict) -> Iterator[None]:
    yield
    for state in ("active", "paused"):
        for r in client.get("/v1/rollouts", params={"state": state}, headers=auth).json()["data"]:
            client.post(f"/v1/rollouts/{r['id']}/abort", headers=auth)


def beat(client: TestClient, dev: Dev, **body: object) -> None:
    r = client.post(f"/v1/devices/{dev.id}/heartbeat", json=body, headers=dev.headers)
    assert r.status_code == 200, r.text


def two_model_device(client: TestClient, auth: dict, m: dict[str, dict], name: str) -> Dev:
    """An agent that keeps models apart, running det1 (its first model) and cls1."""
    d = enroll(client, auth, name)
    dev = Dev(d["device_id"], {"Authorization": f"Bearer {d['credential']}"},
              d["manifest_public_key"])
    report(client, dev, m["det1"]["id"])
    report(client, dev, m["cls1"]["id"])
    beat(client, dev, models=[{"model": f"model-{m[k]['model_id']}", "version_id": m[k]["id"]}
                              for k in ("det1", "cls1")])
    return dev


def by_model(body: dict) -> dict[int, dict]:
    return {e["model_id"]: e for e in body["models"]}


def device(client: TestClient, auth: dict, dev: Dev) -> dict:
    r = client.get(f"/v1/devices/{dev.id}", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def test_two_models_roll_out_to_one_device_independently(
        client: TestClient, auth: dict, settings: Settings, two_models: dict[str, dict]
        ) -> None:
    m = two_models
    det, cls = m["det1"]["model_id"], m["cls1"]["model_id"]
    dev = two_model_device(client, auth, m, "two-models")
    shown = device(client, auth, dev)
    assert shown["multi_model"] is True
    assert [(d["model"], d["current_version_id"]) for d in shown["models"]] == [
        (f"model-{det}", m["det1"]["id"]), (f"model-{cls}", m["cls1"]["id"])]
    assert shown["current_version_id"] == m["det1"]["id"]  # the primary model

    r_det = create(client, auth, m["det2"]["id"], [dev], waves=[100])
    r_cls = create(client, auth, m["cls2"]["id"], [dev], waves=[100])  # same device: free
    busy = client.post("/v1/rollouts", headers=auth, json={
        "version_id": m["det1"]["id"], "selector": {"device_ids": [dev.id]}})
    assert busy.status_code == 409 and f"active rollout of model {det}" in busy.json()["detail"]
    want = desired(client, dev)
    assert {k: (e["version_id"], e["rollout_id"], e["model"]) for k, e in
            by_model(want).items()} == {
        det: (m["det2"]["id"], r_det["id"], f"model-{det}"),
        cls: (m["cls2"]["id"], r_cls["id"], f"model-{cls}")}
    assert by_model(want)[cls]["name"] == "classifier"
    assert (want["version_id"], want["rollout_id"]) == (m["det2"]["id"], r_det["id"])

    report(client, dev, m["det2"]["id"], rollout_id=r_det["id"])
    run_tick(settings)
    assert rollout(client, auth, r_det["id"])["state"] == "completed"
    assert rollout(client, auth, r_cls["id"])["state"] == "active"
    assert statuses(client, auth, r_cls["id"]) == {dev.id: "assigned"}
    report(client, dev, m["cls2"]["id"], rollout_id=r_cls["id"])
    run_tick(settings)
    assert rollout(client, auth, r_cls["id"])["state"] == "completed"
    runs = {d["model_id"]: (d["current_version_id"], d["previous_version_id"], d["phase"])
            for d in device(client, auth, dev)["models"]}
    assert runs == {det: (m["det2"]["id"], m["det1"]["id"], "done"),
                    cls: (m["cls2"]["id"], m["cls1"]["id"], "done")}


def test_abort_pause_and_rollback_act_on_one_model(client: TestClient, auth: dict,
                                                   two_models: dict[str, dict]) -> None:
    m = two_models
    det, cls = m["det1"]["model_id"], m["cls1"]["model_id"]
    dev = two_model_device(client, auth, m, "one-model-at-a-time")
    r_det = create(client, auth, m["det2"]["id"], [dev], waves=[100])
    r_cls = create(client, auth, m["cls2"]["id"], [dev], waves=[100])
    report(client, dev, m["det2"]["id"], phase="probation", rollout_id=r_det["id"])
    report(client, dev, m["cls2"]["id"], phase="probation", rollout_id=r_cls["id"])

    # abort the classifier's rollout: only the classifier goes back
    assert client.post(f"/v1/rollouts/{r_cls['id']}/abort", headers=auth).status_code == 200
    want = by_model(desired(client, dev))
    assert want[cls]["version_id"] == m["cls1"]["id"]
    assert want[cls]["rollback_order"]["order"]["model"] == f"model-{cls}"  # below cls2
    assert want[det]["version_id"] == m["det2"]["id"] and want[det]["rollout_id"] == r_det["id"]
    assert want[det]["rollback_order"] is None
    assert statuses(client, auth, r_det["id"]) == {dev.id: "assigned"}

    # pause the detector's: it holds on what it runs; the classifier does not
    assert client.post(f"/v1/rollouts/{r_det['id']}/pause", headers=auth).status_code == 200
    want = by_model(desired(client, dev))
    assert (want[det]["hold"], want[det]["version_id"]) == (True, m["det2"]["id"])
    assert want[cls]["hold"] is False
    assert client.post(f"/v1/rollouts/{r_det['id']}/resume", headers=auth).status_code == 200
    report(client, dev, m["cls1"]["id"], phase="done")  # went back
    report(client, dev, m["det2"]["id"], rollout_id=r_det["id"])

    # roll the detector back: a signed order for the detector only
    assert client.post(f"/v1/rollouts/{r_det['id']}/rollback", headers=auth).status_code == 200
    want = by_model(desired(client, dev))
    order = want[det]["rollback_order"]["order"]
    assert (order["model"], order["version_id"]) == (f"model-{det}", m["det1"]["id"])
    assert (want[cls]["version_id"], want[cls]["rollout_id"]) == (m["cls1"]["id"], r_cls["id"])
    assert statuses(client, auth, r_cls["id"]) == {dev.id: "cancelled"}
    runs = {d["model_id"]: d["current_version_id"] for d in device(client, auth, dev)["models"]}
    assert runs == {det: m["det2"]["id"], cls: m["cls1"]["id"]}


def test_the_desired_list_and_its_etag(client: TestClient, auth: dict,
                                       two_models: dict[str, dict]) -> None:
    m = two_models
    det, cls = m["det1"]["model_id"], m["cls1"]["model_id"]
    dev = two_model_device(client, auth, m, "desired-list")
    url = f"/v1/devices/{dev.id}/desired"
    first = client.get(url, headers=dev.headers)
    assert first.json()["models"] == [] and first.json()["version_id"] is None
    create(client, auth, m["cls2"]["id"], [dev], waves=[100])  # the second model only
    changed = client.get(url, headers={**dev.headers, "If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200
    body = changed.json()
    assert [e["model_id"] for e in body["models"]] == [cls]
    # the top-level fields are the primary model's (the detector): no rollout names it
    assert (body["version_id"], body["rollout_id"], body["model_id"]) == (None, None, None)
    again = client.get(url, headers={**dev.headers, "If-None-Match": changed.headers["etag"]})
    assert again.status_code == 304
    r2 = create(client, auth, m["det2"]["id"], [dev], waves=[100])
    body = desired(client, dev)
    assert [e["model_id"] for e in body["models"]] == sorted([det, cls])
    assert (body["version_id"], body["rollout_id"]) == (m["det2"]["id"], r2["id"])
    entry = by_model(body)[cls]
    assert set(entry) == {"model", "model_id", "name", "version_id", "number", "onnx_hash",
                          "onnx_size", "rollout_id", "rollback_order", "hold", "runtimes"}
    assert (entry["onnx_hash"], entry["number"]) == (m["cls2"]["onnx_hash"],
                                                     m["cls2"]["number"])


def test_an_agent_that_runs_one_model_keeps_working(client: TestClient, auth: dict,
                                                    settings: Settings,
                                                    two_models: dict[str, dict]) -> None:
    """The protocol of agents that know one model: heartbeats with ``current_version_id``
    only, reports without ``model``, the top-level desired fields."""
    m = two_models
    d = enroll(client, auth, "single")
    dev = Dev(d["device_id"], {"Authorization": f"Bearer {d['credential']}"},
              d["manifest_public_key"])
    beat(client, dev, current_version_id=m["det1"]["id"], status="ok")
    shown = device(client, auth, dev)
    assert shown["multi_model"] is False
    assert shown["current_version_id"] == m["det1"]["id"]
    assert [x["model_id"] for x in shown["models"]] == [m["det1"]["model_id"]]
    r = create(client, auth, m["det2"]["id"], [dev], waves=[100])
    want = desired(client, dev)
    assert (want["version_id"], want["number"], want["rollout_id"], want["hold"]) == (
        m["det2"]["id"], m["det2"]["number"], r["id"], False)
    report(client, dev, m["det2"]["id"], rollout_id=r["id"])
    run_tick(settings)
    assert rollout(client, auth, r["id"])["state"] == "completed"
    beat(client, dev, current_version_id=m["det2"]["id"])
    shown = device(client, auth, dev)
    assert (shown["current_version_id"], shown["previous_version_id"]) == (
        m["det2"]["id"], m["det1"]["id"])
    refused = client.post("/v1/rollouts", headers=auth, json={
        "version_id": m["cls2"]["id"], "selector": {"device_ids": [dev.id]}})
    assert refused.status_code == 409 and "upgrade hadmc-agent" in refused.json()["detail"]


def _det1(m: dict[str, dict]) -> int:
    return int(m["det1"]["id"])


def _cls(m: dict[str, dict]) -> str:
    return f"model-{m['cls1']['model_id']}"


@pytest.mark.parametrize("path,make", [
    ("heartbeat", lambda m: {"models": [{"version_id": _det1(m), "extra": 1}]}),
    ("heartbeat", lambda m: {"models": [{"model": "detector", "version_id": _det1(m)}]}),
    ("heartbeat", lambda m: {"models": [{"model": _cls(m), "version_id": _det1(m)}]}),
    ("heartbeat", lambda m: {"models": [{"version_id": 999999}]}),
    ("updates", lambda m: {"version_id": _det1(m), "ok": True, "phase": "done",
                           "model": _cls(m)}),
], ids=["extra-field", "not-a-model-line", "version-of-another-model", "unknown-version",
        "report-of-another-model"])
def test_a_version_named_with_another_model_is_refused(client: TestClient, auth: dict,
                                                       two_models: dict[str, dict],
                                                       path: str, make: Any) -> None:
    d = enroll(client, auth, "wrong-model")
    r = client.post(f"/v1/devices/{d['device_id']}/{path}", json=make(two_models),
                    headers={"Authorization": f"Bearer {d['credential']}"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_fleet_counts_each_model_a_device_runs(client: TestClient, auth: dict,
                                               settings: Settings,
                                               two_models: dict[str, dict]) -> None:
    m = two_models
    two_model_device(client, auth, m, "counted")
    with session_scope(settings.database_url) as s:
        counts = fleet_svc.fleet_counts(session=s, now=utcnow(), offline_after_seconds=60)
    per_version = {v["version_id"]: v["devices"] for v in counts["versions"]}
    assert per_version.get(m["det1"]["id"], 0) >= 1 and per_version.get(m["cls1"]["id"], 0) >= 1
    assert sum(per_version.values()) > counts["total"] - counts["unversioned"]
    text = client.get("/metrics", headers=auth).text
    line = (f'hadmc_devices_by_version{{model_id="{m["cls1"]["model_id"]}",'
            f'version_id="{m["cls1"]["id"]}"}}')
    assert line in text
