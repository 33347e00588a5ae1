"""``/metrics``: fleet gauges from the database, valid for Prometheus (``promtool check
metrics``), equal to what the API says, the same whichever ``hadmc serve`` worker answers.

A private database holds a known fleet: devices online, offline, revoked, on probation, in
an active, a paused and an aborted rollout; update reports; finished, running and queued
jobs (the queued ones in a private Redis queue); downloads of full files and deltas.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from cloud_service import migrate
from cloud_service.app import create_app
from cloud_service.db import session_scope, utcnow
from cloud_service.models import Dataset, Device, Job
from cloud_service.services.fleet import Placement, device_state
from cloud_service.settings import Settings
from cloud_service.tasks.dispatch import enqueue_job
from tests.cloud_service.conftest import (
    create_database,
    drop_database,
    enroll,
    make_onnx,
    make_settings,
    new_user_token,
    publish_onnx,
)

HADMC = str(Path(sys.executable).parent / "hadmc")
OFFLINE_AFTER = 3600.0  # long, so that no device goes quiet while the tests run
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
#: Families read from the database or the broker: identical in every scrape of one state.
FLEET = ("hadmc_devices", "hadmc_devices_by_version", "hadmc_rollouts",
         "hadmc_rollout_devices", "hadmc_rollout_current_wave", "hadmc_update_reports",
         "hadmc_jobs", "hadmc_job_stage_seconds", "hadmc_queue_depth",
         "hadmc_metrics_source_up")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed; the metrics tests check the exposition with "
                    "it (`apt-get install prometheus`, as scripts/test.sh does)", pytrace=False)
    return path


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def fleet_part(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items()
            if k[0].removesuffix("_total").removesuffix("_sum").removesuffix("_count")
            in FLEET}


@dataclass
class Fleet:
    settings: Settings
    auth: dict[str, str]
    device: dict[str, str]  # headers of an online device (downloads)
    v1: dict
    v2: dict
    rollouts: dict[str, int]
    reports: Counter[tuple[str, bool]]
    sent: dict[str, int]


def _report(client: TestClient, dev: dict, version_id: int, reports: Counter,
            ok: bool = True, phase: str = "done", rollout_id: int | None = None) -> None:
    body = {"version_id": version_id, "ok": ok, "phase": phase, "rollout_id": rollout_id,
            "reason": None if ok else "hash mismatch", "p50_ms": 10.0 if ok else None}
    r = client.post(f"/v1/devices/{dev['device_id']}/updates", json=body,
                    headers=_dev_headers(dev))
    assert r.status_code == 201, r.text
    reports[(phase, ok)] += 1


def _dev_headers(dev: dict) -> dict[str, str]:
    return {"Authorization": f"Bearer {dev['credential']}"}


def _rollout(client: TestClient, auth: dict, version_id: int, devs: list[dict],
             waves: list[int]) -> int:
    r = client.post("/v1/rollouts", headers=auth, json={
        "version_id": version_id, "selector": {"device_ids": [d["device_id"] for d in devs]},
        "waves": waves, "wave_timeout_seconds": 3600})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _jobs(settings: Settings, model_id: int) -> None:
    """Finished jobs with per-stage timings, one running, two queued in the broker."""
    with session_scope(settings.database_url) as s:
        data = Dataset(name="d", builtin="digits", size_bytes=0, details={})
        s.add(data)
        s.flush()
        for state, timings in (("succeeded", {"baseline": 1.5, "quantize": 2.0}),
                               ("succeeded", {"baseline": 2.5}),
                               ("failed", {"baseline": 0.5, "quantize": 4.0}),
                               ("running", {"baseline": 9.0}),
                               ("queued", {}), ("queued", {})):
            s.add(Job(model_id=model_id, dataset_id=data.id, profile="x86-avx2", config={},
                      state=state, timings=timings, log_tail="", done=0, total=0,
                      attempts=0, cancel_requested=False))
    with session_scope(settings.database_url) as s:
        queued = list(s.scalars(select(Job.id).where(Job.state == "queued")))
    for job_id in queued:
        assert enqueue_job(job_id, settings)


def _build(client: TestClient, settings: Settings, tmp: Path) -> Fleet:
    auth = {"Authorization": f"Bearer {new_user_token(settings)}"}
    w1 = np.random.default_rng(5).standard_normal((32, 8)).astype(np.float32)
    r = client.post("/v1/models", params={"name": "mlp", "format": "onnx"},
                    content=make_onnx(tmp / "base.onnx", w1).read_bytes(),
                    headers={**auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    model_id = r.json()["id"]
    v1, v2 = (publish_onnx(client, auth, model_id,
                           make_onnx(tmp / f"v{i}.onnx", w).read_bytes())
              for i, w in ((1, w1), (2, w1 + np.float32(0.01))))
    names = ["a_online", "b_offline", "d_revoked", "e_probation", "f_succeeded",
             "g_assigned", "h_pending", "i_failed", "j_cancelled", "k_paused"]
    devs = {n.split("_")[0]: enroll(client, auth, n) for n in names}
    reports: Counter[tuple[str, bool]] = Counter()
    for dev in devs.values():
        _report(client, dev, v1["id"], reports)
    assert client.delete(f"/v1/devices/{devs['d']['device_id']}", headers=auth).status_code \
        == 200
    r = client.post(f"/v1/devices/{devs['e']['device_id']}/heartbeat", headers=_dev_headers(
        devs["e"]), json={"current_version_id": v1["id"], "status": "probation"})
    assert r.status_code == 200, r.text
    client.app.state.heartbeats.flush()
    with session_scope(settings.database_url) as s:
        s.get(Device, devs["b"]["device_id"]).last_seen_at = utcnow() - timedelta(days=1)

    rollouts = {"active": _rollout(client, auth, v2["id"],
                                   [devs["f"], devs["g"], devs["h"]], [50, 100]),
                "paused": _rollout(client, auth, v2["id"], [devs["k"]], [100]),
                "aborted": _rollout(client, auth, v2["id"], [devs["i"], devs["j"]], [100])}
    _report(client, devs["f"], v2["id"], reports, rollout_id=rollouts["active"])
    _report(client, devs["i"], v2["id"], reports, ok=False, phase="verify",
            rollout_id=rollouts["aborted"])
    for state, action in (("paused", "pause"), ("aborted", "abort")):
        r = client.post(f"/v1/rollouts/{rollouts[state]}/{action}", headers=auth)
        assert r.status_code == 200 and r.json()["state"] == state, r.text

    device = _dev_headers(devs["a"])
    full = client.get(f"/v1/versions/{v2['id']}/model.onnx", headers=device)
    part = client.get(f"/v1/versions/{v2['id']}/model.onnx",
                      headers={**device, "Range": "bytes=0-15"})
    delta = client.get(f"/v1/versions/{v2['id']}/delta", params={"from": v1["id"]},
                       headers=device)
    assert (full.status_code, part.status_code, delta.status_code) == (200, 206, 200)
    _jobs(settings, model_id)
    return Fleet(settings, auth, device, v1, v2, rollouts, reports,
                 {"full": len(full.content) + len(part.content), "delta": len(delta.content)})


@pytest.fixture(scope="module")
def known(tmp_path_factory: pytest.TempPathFactory, redis_url: str
          ) -> Iterator[tuple[Fleet, TestClient]]:
    import redis

    url = create_database()
    tmp = tmp_path_factory.mktemp("metrics")
    settings = make_settings(tmp, database_url=url, broker_url=redis_url,
                             queue=f"hadmc_metrics_{uuid.uuid4().hex[:8]}",
                             offline_after_seconds=OFFLINE_AFTER)
    try:
        migrate.upgrade(url)
        with TestClient(create_app(settings)) as client:
            yield _build(client, settings, tmp), client
    finally:
        redis.Redis.from_url(redis_url).delete(settings.queue)
        drop_database(url)


def test_metrics_pass_promtool_and_match_the_fleet(known: tuple[Fleet, TestClient]) -> None:
    fleet, client = known
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    check = subprocess.run([promtool(), "check", "metrics"], input=r.text, text=True,
                           capture_output=True, timeout=60)
    assert (check.returncode, check.stdout + check.stderr) == (0, ""), r.text
    broken = r.text.replace("hadmc_update_reports_total", "hadmc_update_reports")
    assert subprocess.run([promtool(), "check", "metrics"], input=broken, text=True,
                          capture_output=True, timeout=60).returncode != 0  # it can fail

    m = parse(r.text)
    assert {s: value(m, "hadmc_devices", state=s)
            for s in ("online", "offline", "updating", "failed")} == \
        {"online": 4, "offline": 1, "updating": 3, "failed": 1}
    # Against the API: every device it lists that is not revoked, by the version it runs
    # of each model.
    listed = client.get("/v1/devices", params={"limit": 100}, headers=fleet.auth).json()
    by_version = Counter(str(m["current_version_id"]) for d in listed["data"]
                         if d["revoked_at"] is None for m in d["models"]
                         if m["current_version_id"] is not None)
    assert {dict(k[1])["version_id"]: v for k, v in m.items()
            if k[0] == "hadmc_devices_by_version"} == by_version == \
        {str(fleet.v1["id"]): 8, str(fleet.v2["id"]): 1}
    assert value(m, "hadmc_devices_by_version", model_id=str(fleet.v1["model_id"]),
                 version_id=str(fleet.v2["id"])) == 1

    assert {s: value(m, "hadmc_rollouts", state=s) for s in
            ("active", "paused", "completed", "aborted", "rolled_back")} == \
        {"active": 1, "paused": 1, "completed": 0, "aborted": 1, "rolled_back": 0}
    shown = {(dict(k[1])["rollout_id"], dict(k[1])["wave"], dict(k[1])["status"]): v
             for k, v in m.items() if k[0] == "hadmc_rollout_devices" and v}
    expected = {}
    for state in ("active", "paused"):  # only open rollouts, counted as the API counts
        rid = fleet.rollouts[state]
        got = client.get(f"/v1/rollouts/{rid}", headers=fleet.auth).json()
        for wave, counts in enumerate(got["wave_counts"]):
            expected |= {(str(rid), str(wave), st): n for st, n in counts.items() if n}
    assert shown == expected == {
        (str(fleet.rollouts["active"]), "0", "succeeded"): 1,
        (str(fleet.rollouts["active"]), "0", "assigned"): 1,
        (str(fleet.rollouts["active"]), "1", "pending"): 1,
        (str(fleet.rollouts["paused"]), "0", "assigned"): 1}

    reports = {(dict(k[1])["phase"], dict(k[1])["ok"] == "true"): v for k, v in m.items()
               if k[0] == "hadmc_update_reports_total" and v}
    assert reports == fleet.reports == {("done", True): 11, ("verify", False): 1}

    assert {s: value(m, "hadmc_jobs", state=s) for s in
            ("succeeded", "failed", "running", "queued")} == \
        {"succeeded": 2, "failed": 1, "running": 1, "queued": 2}
    assert value(m, "hadmc_job_stage_seconds_count", stage="baseline") == 3
    assert value(m, "hadmc_job_stage_seconds_sum", stage="baseline") == pytest.approx(4.5)
    assert value(m, "hadmc_job_stage_seconds_count", stage="quantize") == 2
    assert value(m, "hadmc_job_stage_seconds_sum", stage="quantize") == pytest.approx(6.0)
    assert value(m, "hadmc_queue_depth", queue=fleet.settings.queue) == 2

    assert value(m, "hadmc_download_bytes_total", kind="full") == fleet.sent["full"]
    assert value(m, "hadmc_download_bytes_total", kind="delta") == fleet.sent["delta"]
    assert 0 < fleet.sent["delta"] < fleet.sent["full"]
    assert value(m, "hadmc_devices_downloaded_bytes_total") == sum(fleet.sent.values())
    assert value(m, "hadmc_metrics_source_up", source="database") == 1
    assert value(m, "hadmc_metrics_source_up", source="broker") == 1


def test_metrics_token(tmp_path: Path, known: tuple[Fleet, TestClient]) -> None:
    token = "metrics-" + uuid.uuid4().hex
    settings = make_settings(tmp_path, database_url=known[0].settings.database_url,
                             metrics_token=token)
    with TestClient(create_app(settings)) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            r = c.get("/metrics", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["content-type"] == "application/problem+json"
        r = c.get("/metrics", headers={"Authorization": f"bearer {token}"})
        assert r.status_code == 200 and "hadmc_devices{" in r.text


@pytest.mark.parametrize("token", ["changeme", "short"], ids=["placeholder", "too-short"])
def test_metrics_token_placeholder_refused_in_prod(token: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="HADMC_METRICS_TOKEN"):
        Settings(environment="prod", metrics_token=token)


NOW = utcnow()


@dataclass
class _Dev:
    last_seen_at: object
    created_at: object
    status: str | None


@pytest.mark.parametrize(("seen_ago", "status", "placement", "state"), [
    (10, "ok", None, "online"),
    (None, None, None, "online"),  # registered a moment ago, not reported yet
    (100, "ok", None, "offline"),
    (10, "probation", None, "updating"),
    (10, "updating to 7", None, "updating"),
    (100, "probation", None, "offline"),  # a stale status says nothing
    (100, "ok", Placement(1, "assigned", "active"), "updating"),
    (10, "ok", Placement(1, "assigned", "paused"), "updating"),
    (10, "ok", Placement(1, "assigned", "aborted"), "online"),
    (10, "update to 7 failed (verify)", Placement(1, "failed", "active"), "failed"),
    (100, "ok", Placement(1, "failed", "aborted"), "failed"),
    (10, "ok", Placement(1, "succeeded", "completed"), "online"),
    (10, "ok", Placement(1, "cancelled", "aborted"), "online"),
], ids=["online", "just-enrolled", "offline", "probation", "updating-status",
        "offline-stale-status", "assigned-offline", "assigned-paused", "assigned-closed",
        "failed", "failed-offline", "succeeded", "cancelled"])
def test_device_state_rule(seen_ago: int | None, status: str | None,
                           placement: Placement | None, state: str) -> None:
    dev = _Dev(None if seen_ago is None else NOW - timedelta(seconds=seen_ago),
               NOW - timedelta(seconds=5) if seen_ago is None else NOW - timedelta(days=1),
               status)
    assert device_state(dev, NOW, offline_after_seconds=90,
                        placement=placement) == state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _per_process_scrapes(metrics_dir: Path) -> dict[str, float]:
    """``GET /metrics`` requests each worker process counted (its own counter file)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    out = {}
    for path in metrics_dir.glob("counter_*.db"):
        n = sum(s.value for fam in MultiProcessCollector.merge([str(path)])
                for s in fam.samples if s.name == "hadmc_http_requests_total"
                and s.labels.get("route") == "/metrics")
        out[path.stem.removeprefix("counter_")] = n
    return out


def test_fleet_gauges_agree_across_serve_workers(tmp_path: Path,
                                                 known: tuple[Fleet, TestClient]) -> None:
    fleet, client = known
    s = fleet.settings
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HADMC_") and k.upper() != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"HADMC_DATABASE_URL": s.database_url, "HADMC_BROKER_URL": s.broker_url or "",
                "HADMC_QUEUE": s.queue, "HADMC_ARTIFACT_DIR": str(s.artifact_dir),
                "HADMC_SIGNING_KEY_FILE": str(s.signing_key_file),
                "HADMC_RECONCILE_INTERVAL_SECONDS": "0", "HADMC_ROLLOUT_INTERVAL_SECONDS": "0",
                "HADMC_OFFLINE_AFTER_SECONDS": str(OFFLINE_AFTER),
                "TMPDIR": str(tmp_path)})  # where serve makes its metrics directory
    port, log = _free_port(), tmp_path / "serve.log"
    proc = subprocess.Popen([HADMC, "serve", "--port", str(port), "--workers", "2"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"hadmc serve did not start:\n{log.read_text()[-3000:]}")
        [metrics_dir] = tmp_path.glob("hadmc-metrics-*")
        # Downloads land on either worker; the counter adds them up.
        for _ in range(10):
            r = httpx.get(f"{url}/v1/versions/{fleet.v2['id']}/model.onnx",
                          headers={**fleet.device, "Range": "bytes=0-15"}, timeout=10)
            assert r.status_code == 206
        first = parse(client.get("/metrics").text)  # the same state through the test's app
        scrapes = 0
        while scrapes < 200:  # new connections until each worker answered a few scrapes
            text = httpx.get(f"{url}/metrics", timeout=10).text
            scrapes += 1
            got = parse(text)
            assert fleet_part(got) == fleet_part(first), scrapes
            per_process = _per_process_scrapes(metrics_dir)
            if len(per_process) == 2 and min(per_process.values()) >= 3:
                break
        assert len(per_process) == 2 and min(per_process.values()) >= 3, per_process
        time.sleep(0.3)  # the last scrape is counted after its answer went out
        final = parse(httpx.get(f"{url}/metrics", timeout=10).text)
        assert value(final, "hadmc_http_requests_total", method="GET", route="/metrics",
                     status="200") == scrapes
        assert value(final, "hadmc_download_bytes_total", kind="full") == 10 * 16
        assert value(final, "hadmc_devices_downloaded_bytes_total") == \
            sum(fleet.sent.values()) + 10 * 16
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    assert not list(tmp_path.glob("hadmc-metrics-*")), "serve leaves its metrics directory"
