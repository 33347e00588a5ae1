"""Helpers shared by the rollout tests: a fleet on version 1, reports, scheduler ticks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi.testclient import TestClient

from cloud_service.db import session_scope, utcnow
from cloud_service.services.scheduler import Decision, tick
from cloud_service.settings import Settings
from tests.cloud_service.conftest import enroll


@dataclass
class Dev:
    id: int
    headers: dict[str, str]
    public_key: str


def fleet(client: TestClient, auth: dict, n: int, on_version: int, p50: float = 10.0
          ) -> list[Dev]:
    """``n`` fresh devices that run ``on_version`` (reported, with its p50)."""
    devs = []
    for i in range(n):
        d = enroll(client, auth, f"fleet-{i}")
        dev = Dev(d["device_id"], {"Authorization": f"Bearer {d['credential']}"},
                  d["manifest_public_key"])
        report(client, dev, on_version, ok=True, p50=p50)
        devs.append(dev)
    return devs


def report(client: TestClient, dev: Dev, version_id: int, ok: bool = True,
           phase: str | None = None, p50: float | None = 10.0, reason: str | None = None,
           rollout_id: int | None = None) -> dict:
    body = {"version_id": version_id, "ok": ok, "phase": phase or ("done" if ok else "verify"),
            "reason": reason, "p50_ms": p50 if ok else None, "p95_ms": p50 and p50 * 1.5,
            "bytes_downloaded": 100, "rollout_id": rollout_id}
    r = client.post(f"/v1/devices/{dev.id}/updates", json=body, headers=dev.headers)
    assert r.status_code == 201, r.text
    return r.json()


def create(client: TestClient, auth: dict, version_id: int, devs: list[Dev],
           **kw: object) -> dict:
    body = {"version_id": version_id, "selector": {"device_ids": [d.id for d in devs]},
            "wave_timeout_seconds": 600, **kw}
    r = client.post("/v1/rollouts", json=body, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


def run_tick(settings: Settings, after_seconds: float = 0.0) -> list[Decision]:
    now: datetime = utcnow() + timedelta(seconds=after_seconds)
    with session_scope(settings.database_url) as s:
        return tick(s, now)


def desired(client: TestClient, dev: Dev) -> dict:
    r = client.get(f"/v1/devices/{dev.id}/desired", headers=dev.headers)
    assert r.status_code == 200, r.text
    return r.json()


def rollout(client: TestClient, auth: dict, rollout_id: int) -> dict:
    r = client.get(f"/v1/rollouts/{rollout_id}", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def events(client: TestClient, auth: dict, rollout_id: int) -> list[dict]:
    r = client.get(f"/v1/rollouts/{rollout_id}/events", headers=auth)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def statuses(client: TestClient, auth: dict, rollout_id: int) -> dict[int, str]:
    r = client.get(f"/v1/rollouts/{rollout_id}/devices", headers=auth)
    assert r.status_code == 200, r.text
    return {d["device_id"]: d["status"] for d in r.json()["data"]}
