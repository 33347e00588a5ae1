"""Rollout controls against mistakes: abort and pause stop devices, an older version rolls
out like any other, an automatic abort sends moved devices back, revoked devices leave
their wave, success counts only after commit, and a version goes only to devices it fits
(hardware, runtime, model line, input/output signature)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.settings import Settings
from tests.cloud_service.conftest import device_profile, enroll, make_onnx, publish_onnx
from tests.cloud_service.rollout_helpers import (
    Dev,
    create,
    desired,
    events,
    fleet,
    report,
    rollout,
    run_tick,
    statuses,
)


@pytest.fixture(scope="module")
def versions(client: TestClient, auth: dict, tiny_model: dict,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("ctl")
    w1 = np.random.default_rng(3).standard_normal((32, 8)).astype(np.float32)
    v1, v2 = (publish_onnx(client, auth, tiny_model["id"],
                           make_onnx(tmp / f"{i}.onnx", w).read_bytes())
              for i, w in ((1, w1), (2, w1 + np.float32(0.01))))
    return v1, v2


@pytest.fixture(autouse=True)
def _close_rollouts(client: TestClient, auth: dict) -> Iterator[None]:
    """Each test leaves no open rollout behind (the scheduler's ticks see them all)."""
    yield
    for state in ("active", "paused"):
        for r in client.get("/v1/rollouts", params={"state": state}, headers=auth).json()["data"]:
            client.post(f"/v1/rollouts/{r['id']}/abort", headers=auth)


def rows(client: TestClient, auth: dict, rollout_id: int) -> dict[int, dict]:
    r = client.get(f"/v1/rollouts/{rollout_id}/devices", headers=auth)
    assert r.status_code == 200, r.text
    return {d["device_id"]: d for d in r.json()["data"]}


def post(client: TestClient, auth: dict, rollout_id: int, action: str) -> dict:
    r = client.post(f"/v1/rollouts/{rollout_id}/{action}", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def test_abort_sends_unreported_devices_back_and_refuses_late_successes(
        client: TestClient, auth: dict, settings: Settings, versions: tuple[dict, dict]
) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 3, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[100])
    report(client, devs[0], v2["id"], rollout_id=r["id"])  # committed before the abort
    assert all(desired(client, d)["version_id"] == v2["id"] for d in devs)
    assert post(client, auth, r["id"], "abort")["state"] == "aborted"
    # the two that had not reported go back to v1 at once; the one that succeeded stays
    assert [desired(client, d)["version_id"] for d in devs] == [v2["id"], v1["id"], v1["id"]]
    report(client, devs[1], v2["id"], rollout_id=r["id"])  # arrives after the abort
    st = rows(client, auth, r["id"])
    assert [st[d.id]["status"] for d in devs] == ["succeeded", "cancelled", "cancelled"]
    assert "aborted by user" in st[devs[1].id]["reason"]
    # the late one moved to v2: it is told to come back with a signed order
    back = desired(client, devs[1])
    assert back["version_id"] == v1["id"] and back["rollback_order"] is not None
    assert rollout(client, auth, r["id"])["wave_counts"] == [{"succeeded": 1, "cancelled": 2}]
    assert [e["details"].get("cancelled") for e in events(client, auth, r["id"])
            if e["kind"] == "abort"] == [2]


def test_pause_holds_assigned_devices_until_resume(client: TestClient, auth: dict,
                                                   settings: Settings,
                                                   versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 2, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[100])
    post(client, auth, r["id"], "pause")
    for d in devs:
        held = desired(client, d)
        assert held["hold"] is True and held["version_id"] == v1["id"]
        assert held["rollback_order"] is None
    report(client, devs[0], v2["id"], rollout_id=r["id"])  # one that had already started
    assert desired(client, devs[0])["version_id"] == v2["id"]  # holds what it now runs
    assert run_tick(settings, 3600) == []  # paused: no decisions, no timeout
    post(client, auth, r["id"], "resume")
    assert [(desired(client, d)["version_id"], desired(client, d)["hold"]) for d in devs] \
        == [(v2["id"], False)] * 2


def test_rolling_out_an_older_version_succeeds_without_flapping(
        client: TestClient, auth: dict, settings: Settings, versions: tuple[dict, dict]
) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 2, v2["id"])  # on the newer version
    r = create(client, auth, v1["id"], devs, waves=[100])
    for d in devs:
        want = desired(client, d)
        assert want["version_id"] == v1["id"] and want["rollback_order"] is not None
        report(client, d, v1["id"], phase="rollback", rollout_id=r["id"])  # obeyed
    assert [d.kind for d in run_tick(settings)] == ["complete"]
    assert set(statuses(client, auth, r["id"]).values()) == {"succeeded"}
    assert run_tick(settings, 7200) == []
    assert all(desired(client, d)["version_id"] == v1["id"] for d in devs)


@pytest.mark.parametrize("rollback_on_abort", [True, False], ids=["rollback", "stay"])
def test_automatic_abort_rolls_moved_devices_back(client: TestClient, auth: dict,
                                                  settings: Settings,
                                                  versions: tuple[dict, dict],
                                                  rollback_on_abort: bool) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 3, v1["id"], p50=1.0)
    r = create(client, auth, v2["id"], devs, waves=[60, 100], max_latency_regression=0.25,
               rollback_on_abort=rollback_on_abort)
    for d in devs[:2]:
        report(client, d, v2["id"], p50=30.0, rollout_id=r["id"])  # +2900 %
    [decision] = run_tick(settings)
    assert decision.kind == "abort" and "latency regression" in decision.reason
    st = statuses(client, auth, r["id"])
    want = "rolled_back" if rollback_on_abort else "succeeded"
    assert [st[d.id] for d in devs] == [want, want, "pending"]
    for d in devs[:2]:
        got = desired(client, d)
        if rollback_on_abort:
            assert got["version_id"] == v1["id"] and got["rollback_order"] is not None
        else:
            assert got["version_id"] == v2["id"]


def test_revoked_devices_are_skipped_and_leave_the_denominator(
        client: TestClient, auth: dict, settings: Settings, versions: tuple[dict, dict]
) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 4, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[50, 100])  # 2 + 2
    assert client.delete(f"/v1/devices/{devs[1].id}", headers=auth).status_code == 200
    assert client.delete(f"/v1/devices/{devs[3].id}", headers=auth).status_code == 200
    report(client, devs[0], v2["id"], rollout_id=r["id"])
    assert [d.kind for d in run_tick(settings)] == ["advance"]  # 1 of 1, not 1 of 2
    report(client, devs[2], v2["id"], rollout_id=r["id"])
    assert [d.kind for d in run_tick(settings)] == ["complete"]
    st = rows(client, auth, r["id"])
    assert [st[d.id]["status"] for d in devs] == ["succeeded", "skipped", "succeeded",
                                                  "skipped"]
    assert st[devs[3].id]["reason"] == "device revoked"
    later = create(client, auth, v1["id"], [devs[0], devs[2]], waves=[100])
    assert client.post("/v1/rollouts", headers=auth, json={
        "version_id": v1["id"], "selector": {"device_ids": [devs[1].id]}}).status_code == 422
    assert set(rows(client, auth, later["id"])) == {devs[0].id, devs[2].id}


def test_success_counts_only_after_commit(client: TestClient, auth: dict, settings: Settings,
                                          versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 2, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[100])
    for d in devs:
        report(client, d, v2["id"], phase="probation", rollout_id=r["id"])
    assert run_tick(settings) == []  # both on probation: wait
    st = rows(client, auth, r["id"])
    assert {s["status"] for s in st.values()} == {"assigned"}
    assert "probation" in st[devs[0].id]["reason"]
    dev = client.get(f"/v1/devices/{devs[0].id}", headers=auth).json()
    assert dev["current_version_id"] == v2["id"]
    report(client, devs[0], v2["id"], rollout_id=r["id"])  # committed
    report(client, devs[1], v2["id"], ok=False, phase="health", rollout_id=r["id"],
           reason="p50 latency 9.1 ms is 3.00x that of the version before it")
    st = rows(client, auth, r["id"])
    assert st[devs[0].id]["status"] == "succeeded"
    assert st[devs[1].id]["status"] == "failed"
    assert st[devs[1].id]["reason"].startswith("health: p50 latency")
    dev = client.get(f"/v1/devices/{devs[1].id}", headers=auth).json()
    assert dev["current_version_id"] == v1["id"]  # it went back by itself


# -- what a version fits --------------------------------------------------------------------

def on_version(client: TestClient, auth: dict, name: str, version_id: int,
               profile: dict | None = None) -> Dev:
    d = enroll(client, auth, name, profile)
    dev = Dev(d["device_id"], {"Authorization": f"Bearer {d['credential']}"},
              d["manifest_public_key"])
    report(client, dev, version_id)
    return dev


def test_versions_go_only_to_devices_they_fit(client: TestClient, auth: dict,
                                              versions: tuple[dict, dict],
                                              tmp_path_factory: pytest.TempPathFactory
                                              ) -> None:
    v1, _ = versions
    tmp = tmp_path_factory.mktemp("fit")
    w = np.ones((32, 8), np.float32)
    orin = publish_onnx(client, auth, v1["model_id"],
                        make_onnx(tmp / "orin.onnx", w * 2).read_bytes(), profile="jetson-orin")
    wide = publish_onnx(client, auth, v1["model_id"],
                        make_onnx(tmp / "wide.onnx", np.ones((16, 4), np.float32)).read_bytes())
    r = client.post("/v1/models", params={"name": "other", "format": "onnx"},
                    content=(tmp / "wide.onnx").read_bytes(),
                    headers={**auth, "Content-Type": "application/octet-stream"})
    other = publish_onnx(client, auth, r.json()["id"], (tmp / "wide.onnx").read_bytes())
    x86 = on_version(client, auth, "fit-x86", v1["id"])
    arm = on_version(client, auth, "fit-arm", v1["id"], device_profile("arm64-generic"))
    blind = on_version(client, auth, "fit-blind", v1["id"], {})
    gpu = on_version(client, auth, "fit-orin", v1["id"],
                     device_profile("jetson-orin", runtimes=["onnxruntime-cuda-1.20"]))
    everyone = {"device_ids": [x86.id, arm.id, blind.id, gpu.id]}

    # jetson-orin: only the device with that GPU and runtime; the others are skipped
    made = client.post("/v1/rollouts", headers=auth,
                       json={"version_id": orin["id"], "selector": everyone})
    assert made.status_code == 201, made.text
    st = rows(client, auth, made.json()["id"])
    assert st[gpu.id]["status"] == "assigned"
    assert {st[d.id]["status"] for d in (x86, arm, blind)} == {"skipped"}
    assert "built for jetson-orin (arm64 gpu); the device is x86_64 cpu" \
        in st[x86.id]["reason"]
    assert "not reported its hardware profile" in st[blind.id]["reason"]
    # a device skipped by an open rollout is free for another one
    free = client.post("/v1/rollouts", headers=auth, json={
        "version_id": v1["id"], "selector": {"device_ids": [x86.id]}})
    assert free.status_code == 201, free.text
    post(client, auth, free.json()["id"], "abort")
    post(client, auth, made.json()["id"], "abort")

    # a version that fits none: 409 naming each device's reason
    none = client.post("/v1/rollouts", headers=auth, json={
        "version_id": orin["id"], "selector": {"device_ids": [x86.id, arm.id]}})
    assert none.status_code == 409
    assert none.headers["content-type"].startswith("application/problem+json")
    detail = none.json()["detail"]
    assert f"device {x86.id}: built for jetson-orin" in detail and f"device {arm.id}" in detail

    # another input/output signature of the same model: skipped unless replace_model;
    # another model on an agent that runs one model: skipped, replace_model or not
    for version, why, replace in (
            (wide, "input 'x' [N,16] instead of 'x' [N,32]", False),
            (other, f"the device's agent runs one model (model {v1['model_id']})", False),
            (other, "upgrade hadmc-agent", True)):
        refused = client.post("/v1/rollouts", headers=auth, json={
            "version_id": version["id"], "selector": {"device_ids": [x86.id]},
            "replace_model": replace})
        assert refused.status_code == 409 and why in refused.json()["detail"], refused.text
    replaced = client.post("/v1/rollouts", headers=auth, json={
        "version_id": wide["id"], "selector": {"device_ids": [x86.id]},
        "replace_model": True})
    assert replaced.status_code == 201, replaced.text
    assert replaced.json()["replace_model"] is True
    assert desired(client, x86)["version_id"] == wide["id"]
    post(client, auth, replaced.json()["id"], "abort")

    # once its agent reports per model, another model is a deployment beside the first
    beat = client.post(f"/v1/devices/{x86.id}/heartbeat", headers=x86.headers, json={
        "models": [{"model": f"model-{v1['model_id']}", "version_id": v1["id"]}]})
    assert beat.status_code == 200, beat.text
    added = client.post("/v1/rollouts", headers=auth, json={
        "version_id": other["id"], "selector": {"device_ids": [x86.id]}})
    assert added.status_code == 201, added.text
    assert rows(client, auth, added.json()["id"])[x86.id]["from_version_id"] is None
    want = desired(client, x86)
    assert want["version_id"] == v1["id"]  # the primary model: what it had (aborted)
    assert {m["model_id"]: m["version_id"] for m in want["models"]} == {
        v1["model_id"]: v1["id"], other["model_id"]: other["id"]}
