"""Rollouts: waves advance by rule on device reports, abort on failures, timeouts and
latency regressions, pause/resume, rollback with verifiable signed orders."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.settings import Settings
from tests.cloud_service.conftest import make_onnx, publish_onnx
from tests.cloud_service.rollout_helpers import (
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
    tmp = tmp_path_factory.mktemp("roll")
    w1 = np.random.default_rng(2).standard_normal((32, 8)).astype(np.float32)
    w2 = w1 + np.float32(0.01)
    v1, v2 = (publish_onnx(client, auth, tiny_model["id"],
                           make_onnx(tmp / f"{i}.onnx", w).read_bytes())
              for i, w in ((1, w1), (2, w2)))
    return v1, v2


def test_waves_advance_by_rule_and_complete(client: TestClient, auth: dict, settings: Settings,
                                            versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 4, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[25, 50, 100])
    assert r["state"] == "active" and r["current_wave"] == 0
    assert [sum(c.values()) for c in r["wave_counts"]] == [1, 1, 2]
    assert desired(client, devs[0])["version_id"] == v2["id"]
    assert desired(client, devs[1])["version_id"] is None  # pending: nothing changes yet
    assert run_tick(settings) == []  # wave 0 has not reported: wait
    for wave, members in ((0, devs[:1]), (1, devs[1:2]), (2, devs[2:])):
        for d in members:
            assert desired(client, d)["rollout_id"] == r["id"]
            report(client, d, v2["id"], p50=10.5)
        kinds = [d.kind for d in run_tick(settings)]
        assert kinds == (["complete"] if wave == 2 else ["advance"])
    final = rollout(client, auth, r["id"])
    assert final["state"] == "completed" and final["finished_at"]
    assert set(statuses(client, auth, r["id"]).values()) == {"succeeded"}
    kinds = [e["kind"] for e in events(client, auth, r["id"])]
    assert kinds == ["created", "assigned", "advance", "assigned", "advance", "assigned",
                     "complete"]
    dev = client.get(f"/v1/devices/{devs[0].id}", headers=auth).json()
    assert dev["current_version_id"] == v2["id"] and dev["previous_version_id"] == v1["id"]


def test_abort_on_failures_leaves_later_waves_alone(client: TestClient, auth: dict,
                                                    settings: Settings,
                                                    versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 3, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[50, 100],  # waves of 2, then 1
               rollback_on_abort=False)  # the succeeded one stays (test_rollout_controls)
    report(client, devs[0], v2["id"])
    report(client, devs[1], v2["id"], ok=False, phase="verify",
           reason="chunk w#0 (xor): hash mismatch", rollout_id=r["id"])
    [decision] = run_tick(settings)
    assert decision.kind == "abort" and "1 of 2 devices failed" in decision.reason
    assert rollout(client, auth, r["id"])["state"] == "aborted"
    st = statuses(client, auth, r["id"])
    assert st == {devs[0].id: "succeeded", devs[1].id: "failed", devs[2].id: "pending"}
    assert desired(client, devs[1])["version_id"] == v1["id"]  # the failed one stays on v1
    assert desired(client, devs[2])["version_id"] is None  # never assigned
    assert run_tick(settings, 3600) == []  # aborted: nothing more happens
    devices = client.get(f"/v1/rollouts/{r['id']}/devices", headers=auth).json()["data"]
    assert "hash mismatch" in next(d["reason"] for d in devices if d["device_id"] == devs[1].id)


def test_abort_on_latency_regression(client: TestClient, auth: dict, settings: Settings,
                                     versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 3, v1["id"], p50=10.0)
    r = create(client, auth, v2["id"], devs, waves=[60, 100], max_latency_regression=0.25)
    report(client, devs[0], v2["id"], p50=14.0)
    report(client, devs[1], v2["id"], p50=15.0)
    [decision] = run_tick(settings)
    assert decision.kind == "abort" and "latency regression +45%" in decision.reason
    assert decision.details["median_latency_regression"] == pytest.approx(0.45)
    assert statuses(client, auth, r["id"])[devs[2].id] == "pending"


def test_wave_timeout_counts_silent_devices_as_failed(client: TestClient, auth: dict,
                                                      settings: Settings,
                                                      versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 2, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[100], wave_timeout_seconds=60)
    report(client, devs[0], v2["id"])
    assert run_tick(settings, 30) == []
    [decision] = run_tick(settings, 61)
    assert decision.kind == "abort" and decision.details["timed_out"] == 1
    devices = client.get(f"/v1/rollouts/{r['id']}/devices", headers=auth).json()["data"]
    silent = next(d for d in devices if d["device_id"] == devs[1].id)
    assert silent["status"] == "failed" and "no update report" in silent["reason"]


def test_pause_resume_and_invalid_transitions(client: TestClient, auth: dict,
                                              settings: Settings,
                                              versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 2, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[50, 100])
    url = f"/v1/rollouts/{r['id']}"
    assert client.post(f"{url}/resume", headers=auth).status_code == 409
    assert client.post(f"{url}/pause", headers=auth).json()["state"] == "paused"
    assert client.post(f"{url}/pause", headers=auth).status_code == 409
    report(client, devs[0], v2["id"])
    assert run_tick(settings) == []  # paused: no decisions
    assert client.post(f"{url}/resume", headers=auth).json()["state"] == "active"
    assert [d.kind for d in run_tick(settings)] == ["advance"]
    assert client.post(f"{url}/abort", headers=auth).json()["state"] == "aborted"
    conflict = client.post(f"{url}/abort", headers=auth)
    assert conflict.status_code == 409
    assert conflict.headers["content-type"].startswith("application/problem+json")
    assert client.post("/v1/rollouts/999999/pause", headers=auth).status_code == 404
    kinds = [e["kind"] for e in events(client, auth, r["id"])]
    assert kinds[-4:] == ["resume", "advance", "assigned", "abort"]


def test_rollback_issues_verifiable_signed_orders(client: TestClient, auth: dict,
                                                  settings: Settings,
                                                  versions: tuple[dict, dict]) -> None:
    import json

    from hadmc_core.delta import load_public

    v1, v2 = versions
    devs = fleet(client, auth, 2, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[100])
    for d in devs:
        assert desired(client, d)["rollback_order"] is None
        report(client, d, v2["id"])
    assert [d.kind for d in run_tick(settings)] == ["complete"]
    assert client.post(f"/v1/rollouts/{r['id']}/rollback", headers=auth).json()["state"] \
        == "rolled_back"
    assert client.post(f"/v1/rollouts/{r['id']}/rollback", headers=auth).status_code == 409
    for d in devs:
        want = desired(client, d)
        assert want["version_id"] == v1["id"] and want["number"] == v1["number"]
        signed = want["rollback_order"]
        order = signed["order"]
        assert order["kind"] == "rollback" and order["device_id"] == d.id
        assert (order["version"], order["version_id"]) == (v1["number"], v1["id"])
        assert order["model"] == f"model-{v1['model_id']}"
        assert order["expires"] - order["issued"] == 86400
        payload = json.dumps(order, sort_keys=True, separators=(",", ":")).encode()
        load_public(d.public_key.encode()).verify(bytes.fromhex(signed["signature"]), payload)
        report(client, d, v1["id"], phase="rollback")
    assert set(statuses(client, auth, r["id"]).values()) == {"rolled_back"}
    dev = client.get(f"/v1/devices/{devs[0].id}", headers=auth).json()
    assert dev["current_version_id"] == v1["id"]


def test_scheduler_thread_and_beat_task_advance(client: TestClient, auth: dict,
                                                settings: Settings,
                                                versions: tuple[dict, dict]) -> None:
    import time

    from cloud_service.tasks import make_celery
    from cloud_service.tasks.rollouts import ADVANCE_TASK_NAME, RolloutScheduler

    v1, v2 = versions
    devs = fleet(client, auth, 2, v1["id"])
    r = create(client, auth, v2["id"], devs, waves=[50, 100])
    report(client, devs[0], v2["id"])
    thread = RolloutScheduler(settings.model_copy(update={"rollout_interval_seconds": 0.2}))
    thread.start()
    try:
        for _ in range(50):
            if rollout(client, auth, r["id"])["current_wave"] == 1:
                break
            time.sleep(0.1)
    finally:
        thread.stop()
    assert rollout(client, auth, r["id"])["current_wave"] == 1
    report(client, devs[1], v2["id"])
    app = make_celery(settings.broker_url or "", settings.queue, 5.0)
    entry = app.conf.beat_schedule["advance-rollouts"]
    assert entry["task"] == ADVANCE_TASK_NAME and entry["schedule"] == 5.0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cloud_service.settings.get_settings", lambda: settings)
        assert app.tasks[ADVANCE_TASK_NAME].apply().get() == 1
    assert rollout(client, auth, r["id"])["state"] == "completed"
