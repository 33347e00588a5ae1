from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import update

from cloud_service.app import create_app
from cloud_service.db import session_scope, utcnow
from cloud_service.models import EnrollmentToken
from cloud_service.settings import Settings
from tests.cloud_service.conftest import enroll, make_settings


def _token(client: TestClient, auth: dict, **kw: object) -> dict:
    r = client.post("/v1/enrollment-tokens", json=kw, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


def _register(client: TestClient, token: str, name: str = "d"):  # type: ignore[no-untyped-def]
    return client.post("/v1/devices/register", json={"enrollment_token": token, "name": name})


def test_register_returns_credential_and_public_key(client: TestClient, auth: dict,
                                                    settings: Settings) -> None:
    tok = _token(client, auth, name="fleet", max_uses=2)
    assert tok["token"].startswith("hadmc_e_") and tok["uses"] == 0
    r = _register(client, tok["token"], "cam-1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["credential"].startswith("hadmc_d_")
    assert body["manifest_public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in body["manifest_public_key"]
    key_file = settings.signing_key_file
    assert key_file.stat().st_mode & 0o777 == 0o600
    listed = client.get("/v1/enrollment-tokens", headers=auth).json()["data"]
    assert next(t for t in listed if t["id"] == tok["id"])["uses"] == 1
    assert "token" not in listed[0]


def test_max_uses_expiry_and_revocation(client: TestClient, auth: dict,
                                        settings: Settings) -> None:
    once = _token(client, auth, max_uses=1)
    assert _register(client, once["token"]).status_code == 201
    assert _register(client, once["token"]).status_code == 401
    expired = _token(client, auth)
    with session_scope(settings.database_url) as s:
        s.execute(update(EnrollmentToken).where(EnrollmentToken.id == expired["id"])
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    assert _register(client, expired["token"]).status_code == 401
    revoked = _token(client, auth, max_uses=5)
    r = client.delete(f"/v1/enrollment-tokens/{revoked['id']}", headers=auth)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert client.delete(f"/v1/enrollment-tokens/{revoked['id']}",
                         headers=auth).status_code == 409
    assert _register(client, revoked["token"]).status_code == 401
    assert _register(client, "hadmc_e_made-up").status_code == 401


def test_device_lifecycle(client: TestClient, auth: dict) -> None:
    dev = enroll(client, auth, "edge-7")
    me = {"Authorization": f"Bearer {dev['credential']}"}
    base = f"/v1/devices/{dev['device_id']}"
    profile = client.get(base, headers=me).json()
    assert profile["name"] == "edge-7" and profile["last_seen_at"] is None
    from hadmc_core.hal import load_profile

    prof = load_profile("arm64-generic").model_dump(mode="json")
    r = client.put(f"{base}/profile", json=prof, headers=me)
    assert r.status_code == 200, r.text
    assert r.json()["profile"]["name"] == "arm64-generic"
    assert client.put(f"{base}/profile", json={"name": 3}, headers=me).status_code == 422
    r = client.post(f"{base}/heartbeat", json={"status": "idle"}, headers=me)
    assert r.status_code == 200 and r.json()["device_id"] == dev["device_id"]
    seen = client.get(base, headers=me).json()
    assert seen["status"] == "idle" and seen["last_seen_at"] == r.json()["last_seen_at"]
    r = client.post(f"{base}/heartbeat", json={"current_version_id": 999999}, headers=me)
    assert r.status_code == 422
    r = client.post(f"{base}/heartbeat", json={"current_version_id": 999999},
                    headers={"Authorization": "Bearer hadmc_d_forged"})
    assert r.status_code == 401  # authentication comes before any answer about versions
    r = client.post(f"{base}/latency", json={"p50_ms": 1.5, "p99_ms": 3.0,
                                             "operators": {"Conv": [0.1, 0.2]}}, headers=me)
    assert r.status_code == 200 and r.json()["latency"]["p50_ms"] == 1.5
    listed = client.get("/v1/devices", params={"limit": 1000}, headers=auth).json()
    assert dev["device_id"] in [d["id"] for d in listed["data"]]
    assert client.get("/v1/devices/999999", headers=auth).status_code == 404


def test_enrollment_is_rate_limited(tmp_path: Path, settings: Settings, auth: dict) -> None:
    limited = make_settings(tmp_path, database_url=settings.database_url,
                            broker_url=settings.broker_url, queue=settings.queue,
                            enroll_rate_per_minute=3)
    with TestClient(create_app(limited)) as c:
        codes = [_register(c, "hadmc_e_nope").status_code for _ in range(5)]
    assert codes == [401, 401, 401, 429, 429]


def test_a_revoked_device_is_locked_out(client: TestClient, auth: dict) -> None:
    dev = enroll(client, auth, "stolen")
    me = {"Authorization": f"Bearer {dev['credential']}"}
    base = f"/v1/devices/{dev['device_id']}"
    assert client.post(f"{base}/heartbeat", json={}, headers=me).status_code == 200  # cached
    r = client.delete(base, headers=auth)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    for method, path in (("POST", "/heartbeat"), ("GET", "/desired"), ("GET", "")):
        r = client.request(method, base + path, headers=me,
                           json={} if method == "POST" else None)
        assert r.status_code == 401, (path, r.text)
    assert client.delete(base, headers=auth).status_code == 409
    assert client.delete("/v1/devices/999999", headers=auth).status_code == 404
    listed = client.get(base, headers=auth).json()
    assert listed["revoked_at"] is not None
