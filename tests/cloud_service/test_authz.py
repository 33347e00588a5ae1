"""Every endpoint x {no token, user token, another device's credential, own credential}."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.cloud_service.conftest import enroll

# Who may call each endpoint: public, any (user or device), user, own (the device itself),
# user_or_own.
ACCESS = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/metrics"): "public",
    ("GET", "/v1/profiles"): "any",
    ("POST", "/v1/models"): "user",
    ("GET", "/v1/models"): "user",
    ("GET", "/v1/models/{model_id}"): "user",
    ("POST", "/v1/models/{model_id}/versions"): "user",
    ("POST", "/v1/datasets"): "user",
    ("POST", "/v1/datasets/upload"): "user",
    ("GET", "/v1/datasets"): "user",
    ("GET", "/v1/datasets/{dataset_id}"): "user",
    ("POST", "/v1/jobs"): "user",
    ("GET", "/v1/jobs"): "user",
    ("GET", "/v1/jobs/{job_id}"): "user",
    ("POST", "/v1/jobs/{job_id}/cancel"): "user",
    ("GET", "/v1/versions"): "user",
    ("GET", "/v1/versions/{version_id}"): "any",
    ("GET", "/v1/versions/{version_id}/report"): "user",
    ("GET", "/v1/versions/{version_id}/model.onnx"): "any",
    ("GET", "/v1/versions/{version_id}/manifest"): "any",
    ("GET", "/v1/versions/{version_id}/delta"): "any",
    ("GET", "/v1/versions/{version_id}/probe"): "any",
    ("PUT", "/v1/versions/{version_id}/probe"): "user",
    ("POST", "/v1/enrollment-tokens"): "user",
    ("GET", "/v1/enrollment-tokens"): "user",
    ("DELETE", "/v1/enrollment-tokens/{token_id}"): "user",
    ("POST", "/v1/devices/register"): "public",
    ("GET", "/v1/devices"): "user",
    ("DELETE", "/v1/devices/{device_id}"): "user",
    ("GET", "/v1/devices/{device_id}"): "user_or_own",
    ("PUT", "/v1/devices/{device_id}/profile"): "own",
    ("POST", "/v1/devices/{device_id}/heartbeat"): "own",
    ("POST", "/v1/devices/{device_id}/latency"): "own",
    ("PATCH", "/v1/devices/{device_id}"): "user",
    ("GET", "/v1/devices/{device_id}/desired"): "own",
    ("POST", "/v1/devices/{device_id}/updates"): "own",
    ("POST", "/v1/rollouts"): "user",
    ("GET", "/v1/rollouts"): "user",
    ("GET", "/v1/rollouts/{rollout_id}"): "user",
    ("GET", "/v1/rollouts/{rollout_id}/devices"): "user",
    ("GET", "/v1/rollouts/{rollout_id}/events"): "user",
    ("POST", "/v1/rollouts/{rollout_id}/pause"): "user",
    ("POST", "/v1/rollouts/{rollout_id}/resume"): "user",
    ("POST", "/v1/rollouts/{rollout_id}/abort"): "user",
    ("POST", "/v1/rollouts/{rollout_id}/rollback"): "user",
    ("POST", "/v1/tokens"): "user",
    ("GET", "/v1/tokens"): "user",
    ("DELETE", "/v1/tokens/{token_id}"): "user",
}
ALLOWED = {
    "none": {"public"},
    "user": {"public", "any", "user", "user_or_own"},
    "other_device": {"public", "any"},
    "own_device": {"public", "any", "own", "user_or_own"},
}


@pytest.fixture(scope="module")
def principals(client: TestClient, auth: dict) -> dict:
    own, other = enroll(client, auth, "own"), enroll(client, auth, "other")
    return {"none": {}, "user": auth,
            "other_device": {"Authorization": f"Bearer {other['credential']}"},
            "own_device": {"Authorization": f"Bearer {own['credential']}"},
            "own_id": own["device_id"]}


def test_table_covers_every_route(app: FastAPI) -> None:
    routes = {(m.upper(), path) for path, ops in app.openapi()["paths"].items() for m in ops}
    assert routes == set(ACCESS)


@pytest.mark.parametrize("who", list(ALLOWED))
@pytest.mark.parametrize("method,path", list(ACCESS), ids=[f"{m} {p}" for m, p in ACCESS])
def test_access(client: TestClient, principals: dict, who: str, method: str, path: str) -> None:
    target = principals["own_id"]
    if (method, path) == ("DELETE", "/v1/devices/{device_id}"):  # revokes: not "own"
        target = enroll(client, principals["user"], "victim")["device_id"]
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
