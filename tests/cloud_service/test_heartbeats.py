"""Write-behind heartbeats (services/heartbeats.py) against the real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cloud_service.app import create_app
from cloud_service.db import get_sessionmaker
from cloud_service.models import Device
from cloud_service.services.heartbeats import HeartbeatRecorder
from cloud_service.settings import Settings
from tests.cloud_service.conftest import enroll, make_settings


def _row(settings: Settings, device_id: int) -> Device:
    with get_sessionmaker(settings.database_url)() as s:
        dev = s.scalar(select(Device).where(Device.id == device_id))
        assert dev is not None
        s.expunge(dev)
        return dev


@pytest.fixture
def slow_flush(tmp_path: Path, settings: Settings) -> Settings:
    """The same database, with a flush period long enough that only explicit flushes run."""
    return make_settings(tmp_path, database_url=settings.database_url,
                         broker_url=settings.broker_url, queue=settings.queue,
                         heartbeat_flush_seconds=3600)


def test_heartbeats_wait_in_memory_and_are_written_in_batches(
        slow_flush: Settings, auth: dict) -> None:
    app = create_app(slow_flush)
    with TestClient(app) as c:
        devs = [enroll(c, auth, f"beat-{i}") for i in range(3)]
        for d in devs:
            me = {"Authorization": f"Bearer {d['credential']}"}
            for status in ("booting", None, "ok"):  # a beat without status keeps the last one
                body = {} if status is None else {"status": status}
                r = c.post(f"/v1/devices/{d['device_id']}/heartbeat", json=body, headers=me)
                assert r.status_code == 200, r.text
        assert _row(slow_flush, devs[0]["device_id"]).last_seen_at is None  # not written yet
        assert app.state.heartbeats.flush() == 3  # one row per device, not per beat
        for d in devs:
            row = _row(slow_flush, d["device_id"])
            assert row.last_seen_at is not None and row.status == "ok"


def test_the_cache_keeps_every_authorization_rule(slow_flush: Settings, auth: dict) -> None:
    with TestClient(create_app(slow_flush)) as c:
        a, b = enroll(c, auth, "cache-a"), enroll(c, auth, "cache-b")
        url = f"/v1/devices/{a['device_id']}/heartbeat"
        own = {"Authorization": f"Bearer {a['credential']}"}
        assert c.post(url, json={}, headers=own).status_code == 200  # now cached
        assert c.post(url, json={}, headers={"Authorization": "Bearer hadmc_d_x"}
                      ).status_code == 401
        assert c.post(url, json={}, headers={"Authorization": f"Bearer {b['credential']}"}
                      ).status_code == 403
        assert c.post(url, json={}, headers=auth).status_code == 403  # a user token
        assert c.post(url, json={}).status_code == 401
        r = c.post(url, json={"current_version_id": 999999}, headers=own)
        assert r.status_code == 422 and "999999" in r.json()["detail"]
        seen = c.get(f"/v1/devices/{a['device_id']}", headers=own).json()  # flushes first
        assert seen["last_seen_at"] is not None


def test_a_clean_stop_writes_what_is_pending(slow_flush: Settings, auth: dict) -> None:
    with TestClient(create_app(slow_flush)) as c:
        d = enroll(c, auth, "stop")
        me = {"Authorization": f"Bearer {d['credential']}"}
        assert c.post(f"/v1/devices/{d['device_id']}/heartbeat", json={"status": "bye"},
                      headers=me).status_code == 200
        assert _row(slow_flush, d["device_id"]).status is None
    assert _row(slow_flush, d["device_id"]).status == "bye"  # lifespan end flushed


def test_a_failed_flush_keeps_the_beats_for_the_next(settings: Settings, auth: dict,
                                                     client: TestClient) -> None:
    d = enroll(client, auth, "retry")
    real = get_sessionmaker(settings.database_url)
    calls = []

    def flaky():  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database restarting")
        return real()

    rec = HeartbeatRecorder(flaky, flush_seconds=0)  # type: ignore[arg-type]
    with real() as s:
        assert rec.record(s, d["device_id"], d["credential"], {}, "first") is not None
    with pytest.raises(ConnectionError):
        rec.flush()
    assert rec.record_cached(d["device_id"], d["credential"], {}, None) is not None
    assert rec.flush() == 1
    row = _row(settings, d["device_id"])
    assert row.status == "first" and row.last_seen_at is not None


def test_a_waiting_beat_does_not_undo_a_later_update_report(
        slow_flush: Settings, auth: dict, tmp_path: Path, tiny_model: dict) -> None:
    import numpy as np

    from tests.cloud_service.conftest import make_onnx, publish_onnx

    app = create_app(slow_flush)
    with TestClient(app) as c:
        w = np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32)
        v1, v2 = (publish_onnx(c, auth, tiny_model["id"],
                               make_onnx(tmp_path / f"{i}.onnx", w + i).read_bytes())
                  for i in (1, 2))
        d = enroll(c, auth, "race")
        me = {"Authorization": f"Bearer {d['credential']}"}
        base = f"/v1/devices/{d['device_id']}"
        assert c.post(f"{base}/heartbeat", json={"current_version_id": v1["id"]},
                      headers=me).status_code == 200  # waits in memory
        r = c.post(f"{base}/updates", headers=me,
                   json={"version_id": v2["id"], "ok": True, "phase": "done"})
        assert r.status_code == 201, r.text
        app.state.heartbeats.flush()  # the older beat is written after the report
        row = _row(slow_flush, d["device_id"])
        assert row.current_version_id == v2["id"] and row.last_seen_at is not None
        assert c.post(f"{base}/heartbeat", json={"current_version_id": v2["id"]},
                      headers=me).status_code == 200
        app.state.heartbeats.flush()  # a newer beat still writes as usual
        assert _row(slow_flush, d["device_id"]).current_version_id == v2["id"]
