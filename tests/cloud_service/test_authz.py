"""Every endpoint x {no token, viewer, operator and admin tokens, another device's credential,
own credential}."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_service.settings import Settings
from tests.cloud_service.conftest import enroll, new_user_token

# Who may call each endpoint: public, any (a user of any role or a device), viewer (a user of
# any role), operator (operator or admin), admin, own (the device itself), user_or_own (a user
# of any role or the device itself).
ACCESS = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/v1/profiles"): "any",
    ("POST", "/v1/models"): "operator",
    ("GET", "/v1/models"): "viewer",
    ("GET", "/v1/models/{model_id}"): "viewer",
    ("POST", "/v1/models/{model_id}/versions"): "operator",
    ("POST", "/v1/datasets"): "operator",
    ("POST", "/v1/datasets/upload"): "operator",
    ("GET", "/v1/datasets"): "viewer",
    ("GET", "/v1/datasets/{dataset_id}"): "viewer",
    ("POST", "/v1/jobs"): "operator",
    ("GET", "/v1/jobs"): "viewer",
    ("GET", "/v1/jobs/{job_id}"): "viewer",
    ("POST", "/v1/jobs/{job_id}/cancel"): "operator",
    ("GET", "/v1/versions"): "viewer",
    ("GET", "/v1/versions/{version_id}"): "any",
    ("GET", "/v1/versions/{version_id}/report"): "viewer",
    ("GET", "/v1/versions/{version_id}/model.onnx"): "any",
    ("GET", "/v1/versions/{version_id}/manifest"): "any",
    ("GET", "/v1/versions/{version_id}/delta"): "any",
    ("POST", "/v1/versions/{version_id}/delta"): "any",
    ("GET", "/v1/versions/{version_id}/probe"): "any",
    ("PUT", "/v1/versions/{version_id}/probe"): "operator",
    ("POST", "/v1/enrollment-tokens"): "operator",
    ("GET", "/v1/enrollment-tokens"): "viewer",
    ("DELETE", "/v1/enrollment-tokens/{token_id}"): "operator",
    ("POST", "/v1/devices/register"): "public",
    ("GET", "/v1/devices"): "viewer",
    ("DELETE", "/v1/devices/{device_id}"): "operator",
    ("GET", "/v1/devices/{device_id}"): "user_or_own",
    ("PUT", "/v1/devices/{device_id}/profile"): "own",
    ("POST", "/v1/devices/{device_id}/heartbeat"): "own",
    ("POST", "/v1/devices/{device_id}/latency"): "own",
    ("PATCH", "/v1/devices/{device_id}"): "operator",
    ("GET", "/v1/devices/{device_id}/desired"): "own",
    ("POST", "/v1/devices/{device_id}/updates"): "own",
    ("POST", "/v1/rollouts"): "operator",
    ("GET", "/v1/rollouts"): "viewer",
    ("GET", "/v1/rollouts/{rollout_id}"): "viewer",
    ("GET", "/v1/rollouts/{rollout_id}/devices"): "viewer",
    ("GET", "/v1/rollouts/{rollout_id}/events"): "viewer",
    ("POST", "/v1/rollouts/{rollout_id}/pause"): "operator",
    ("POST", "/v1/rollouts/{rollout_id}/resume"): "operator",
    ("POST", "/v1/rollouts/{rollout_id}/abort"): "operator",
    ("POST", "/v1/rollouts/{rollout_id}/rollback"): "operator",
    ("POST", "/v1/tokens"): "admin",
    ("GET", "/v1/tokens"): "viewer",
    ("DELETE", "/v1/tokens/{token_id}"): "admin",
}
ROLES = ("viewer", "operator", "admin")
ALLOWED = {
    "none": {"public"},
    "viewer": {"public", "any", "viewer", "user_or_own"},
    "operator": {"public", "any", "viewer", "operator", "user_or_own"},
    "admin": {"public", "any", "viewer", "operator", "admin", "user_or_own"},
    "other_device": {"public", "any"},
    "own_device": {"public", "any", "own", "user_or_own"},
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def principals(client: TestClient, settings: Settings, auth: dict) -> dict:
    own, other = enroll(client, auth, "own"), enroll(client, auth, "other")
    roles = {r: bearer(new_user_token(settings, f"authz-{r}", r)) for r in ROLES}
    return {"none": {}, **roles,
            "other_device": bearer(other["credential"]),
            "own_device": bearer(own["credential"]),
            "own_id": own["device_id"]}


def test_table_covers_every_route(app: FastAPI) -> None:
    """Every REST operation is in the table (the pages under /ui have their own tests)."""
    routes = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops
              if not path.startswith("/ui")}
    assert routes == set(ACCESS)


@pytest.mark.parametrize("who", list(ALLOWED))
@pytest.mark.parametrize("method,path", list(ACCESS), ids=[f"{m} {p}" for m, p in ACCESS])
def test_access(client: TestClient, principals: dict, who: str, method: str, path: str) -> None:
    target = principals["own_id"]
    if (method, path) == ("DELETE", "/v1/devices/{device_id}"):  # revokes: not "own"
        target = enroll(client, principals["admin"], "victim")["device_id"]
    url = path.replace("{device_id}", str(target))
    for name in ("model_id", "dataset_id", "job_id", "version_id", "token_id", "rollout_id"):
        url = url.replace("{" + name + "}", "999999")
    kw: dict = {"headers": dict(principals[who])}
    if method in ("POST", "PUT", "PATCH"):
        kw["json"] = {}
    r = client.request(method, url, **kw)
    assert r.status_code < 500, r.text
    if ACCESS[(method, path)] in ALLOWED[who]:
        assert r.status_code not in (401, 403), r.text
    else:
        assert r.status_code == (401 if who == "none" else 403), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        if who in ROLES and ACCESS[(method, path)] in ROLES:  # names the role needed and
            detail = r.json()["detail"]  # the token's
            assert f"needs the {ACCESS[(method, path)]} role" in detail, detail
            assert f"role is {who}" in detail, detail
