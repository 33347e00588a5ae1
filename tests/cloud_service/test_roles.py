"""Roles of API tokens (viewer, operator, admin) and who did what: the acting user's name on
jobs, rollouts, rollout events and devices."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.services.auth import Principal
from cloud_service.settings import Settings
from tests.cloud_service.conftest import enroll, make_onnx, new_user_token, publish_onnx
from tests.cloud_service.rollout_helpers import Dev, events, fleet

Versions = tuple[int, int]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def people(settings: Settings) -> dict[str, dict[str, str]]:
    """vera (viewer), otto (operator), ada (admin)."""
    return {role: bearer(new_user_token(settings, user, role))
            for user, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin"))}


@pytest.fixture(scope="module")
def versions(client: TestClient, auth: dict, tiny_model: dict,
             tmp_path_factory: pytest.TempPathFactory) -> Versions:
    """Two versions: the fleets run the first, rollouts send the second."""
    tmp = tmp_path_factory.mktemp("roles")
    w = np.random.default_rng(7).standard_normal((32, 8)).astype(np.float32)
    return tuple(publish_onnx(client, auth, tiny_model["id"],
                              make_onnx(tmp / f"{i}.onnx", w + i).read_bytes())["id"]
                 for i in range(2))  # type: ignore[return-value]


def devices(client: TestClient, auth: dict, versions: Versions, n: int) -> list[Dev]:
    return fleet(client, auth, n, on_version=versions[0])


def rollout_body(versions: Versions, devs: list[Dev]) -> dict:
    return {"version_id": versions[1], "selector": {"device_ids": [d.id for d in devs]},
            "wave_timeout_seconds": 600}


def test_viewer_reads_rollouts_but_cannot_create_one(client: TestClient, auth: dict,
                                                     people: dict, versions: Versions) -> None:
    devs = devices(client, auth, versions, 1)
    r = client.post("/v1/rollouts", json=rollout_body(versions, devs), headers=people["viewer"])
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("this needs the operator role (or admin); this "
                                         "token's role is viewer")
    assert client.get("/v1/rollouts", headers=people["viewer"]).status_code == 200


def test_operator_creates_rollouts_but_not_tokens_admin_does_both(
        client: TestClient, auth: dict, people: dict, versions: Versions) -> None:
    made = []
    for role in ("operator", "admin"):
        devs = devices(client, auth, versions, 1)
        r = client.post("/v1/rollouts", json=rollout_body(versions, devs), headers=people[role])
        assert r.status_code == 201, r.text
        made.append(r.json())
    assert [m["created_by_name"] for m in made] == ["otto", "ada"]
    r = client.post("/v1/tokens", json={"name": "x"}, headers=people["operator"])
    assert r.status_code == 403, r.text
    assert "needs the admin role; this token's role is operator" in r.json()["detail"]
    assert client.post("/v1/tokens", json={}, headers=people["admin"]).status_code == 201
    for m in made:
        assert client.post(f"/v1/rollouts/{m['id']}/abort", headers=auth).status_code == 200


def test_who_created_paused_resumed_and_aborted_shows_in_the_events(
        client: TestClient, auth: dict, people: dict, versions: Versions) -> None:
    devs = devices(client, auth, versions, 2)
    ro = client.post("/v1/rollouts", json=rollout_body(versions, devs),
                     headers=people["operator"]).json()
    for action, who in (("pause", "operator"), ("resume", "admin"), ("abort", "operator")):
        r = client.post(f"/v1/rollouts/{ro['id']}/{action}", headers=people[who])
        assert r.status_code == 200, r.text
    by = [(e["kind"], e["by"]) for e in events(client, people["viewer"], ro["id"])]
    assert by == [("created", "otto"), ("assigned", None), ("pause", "otto"),
                  ("resume", "ada"), ("abort", "otto")]
    pause = events(client, auth, ro["id"])[2]
    assert pause["details"]["user_name"] == "otto" and "by user otto" in pause["reason"]
    got = client.get(f"/v1/rollouts/{ro['id']}", headers=people["viewer"]).json()
    assert got["created_by_name"] == "otto" and got["state"] == "aborted"


def test_a_viewer_cannot_pause(client: TestClient, auth: dict, people: dict,
                               versions: Versions) -> None:
    devs = devices(client, auth, versions, 1)
    ro = client.post("/v1/rollouts", json=rollout_body(versions, devs), headers=auth).json()
    r = client.post(f"/v1/rollouts/{ro['id']}/pause", headers=people["viewer"])
    assert r.status_code == 403, r.text
    assert client.get(f"/v1/rollouts/{ro['id']}", headers=auth).json()["state"] == "active"
    client.post(f"/v1/rollouts/{ro['id']}/abort", headers=auth)


def test_jobs_models_and_datasets_show_their_owner(client: TestClient, people: dict,
                                                   tiny_model: dict, digits: dict) -> None:
    body = {"model_id": tiny_model["id"], "dataset_id": digits["id"], "profile": "x86-avx2"}
    assert client.post("/v1/jobs", json=body, headers=people["viewer"]).status_code == 403
    r = client.post("/v1/jobs", json=body, headers=people["operator"])
    assert r.status_code == 202, r.text
    assert r.json()["owner_name"] == "otto"
    job = client.get(f"/v1/jobs/{r.json()['id']}", headers=people["viewer"]).json()
    assert job["owner_name"] == "otto"
    listed = client.get("/v1/jobs", params={"limit": 500}, headers=people["viewer"]).json()
    assert {"otto"} <= {j["owner_name"] for j in listed["data"]}
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=people["viewer"]).status_code \
        == 403
    assert client.post(f"/v1/jobs/{job['id']}/cancel",
                       headers=people["operator"]).status_code == 200
    r = client.post("/v1/datasets", json={"builtin": "digits", "name": "otto's"},
                    headers=people["operator"])
    assert r.status_code == 201 and r.json()["owner_name"] == "otto"
    # The session's models and datasets were made with the tests' token (user alice).
    model = client.get(f"/v1/models/{tiny_model['id']}", headers=people["viewer"]).json()
    assert model["owner_name"] == "alice"


def test_who_revoked_a_device_and_set_its_tags(client: TestClient, auth: dict,
                                               people: dict) -> None:
    dev_id = enroll(client, auth, "audited")["device_id"]
    before = client.get(f"/v1/devices/{dev_id}", headers=people["viewer"]).json()
    assert before["tags_updated_by_name"] is None and before["revoked_by_name"] is None
    r = client.patch(f"/v1/devices/{dev_id}", json={"tags": ["x"]}, headers=people["viewer"])
    assert r.status_code == 403, r.text
    r = client.patch(f"/v1/devices/{dev_id}", json={"tags": ["x"]}, headers=people["operator"])
    assert r.status_code == 200, r.text
    assert r.json()["tags_updated_by_name"] == "otto" and r.json()["tags_updated_at"]
    assert client.delete(f"/v1/devices/{dev_id}", headers=people["viewer"]).status_code == 403
    r = client.delete(f"/v1/devices/{dev_id}", headers=people["admin"])
    assert r.status_code == 200, r.text
    assert r.json()["revoked_by_name"] == "ada"


def test_tokens_carry_the_role_asked_for_operator_by_default(client: TestClient,
                                                            people: dict) -> None:
    made = {}
    for role in ("viewer", "operator", "admin", None):
        body = {"name": f"as {role}"} | ({"role": role} if role else {})
        r = client.post("/v1/tokens", json=body, headers=people["admin"])
        assert r.status_code == 201, r.text
        made[role] = r.json()
    assert [made[r]["role"] for r in made] == ["viewer", "operator", "admin", "operator"]
    viewer = bearer(made["viewer"]["token"])
    assert client.get("/v1/models", headers=viewer).status_code == 200
    assert client.post("/v1/datasets", json={"builtin": "digits"},
                       headers=viewer).status_code == 403
    assert client.post("/v1/tokens", json={}, headers=viewer).status_code == 403
    listed = client.get("/v1/tokens", params={"limit": 500}, headers=viewer).json()["data"]
    assert {t["id"]: t["role"] for t in listed}[made["admin"]["id"]] == "admin"
    r = client.post("/v1/tokens", json={"role": "root"}, headers=people["admin"])
    assert r.status_code == 422, r.text
    # Revoking another token is for admins; any token may revoke itself.
    r = client.delete(f"/v1/tokens/{made['admin']['id']}", headers=viewer)
    assert r.status_code == 403 and "needs the admin role" in r.json()["detail"], r.text
    assert client.delete(f"/v1/tokens/{made['viewer']['id']}", headers=viewer).status_code \
        == 200
    assert client.get("/v1/models", headers=viewer).status_code == 401
    other = bearer(made["operator"]["token"])
    assert client.delete(f"/v1/tokens/{made['admin']['id']}", headers=other).status_code \
        == 403


@pytest.mark.parametrize(("role", "needed", "allowed"), [
    ("viewer", "viewer", True), ("viewer", "operator", False), ("operator", "operator", True),
    ("operator", "admin", False), ("admin", "viewer", True), ("admin", "admin", True),
    ("root", "viewer", False), (None, "viewer", False)],
    ids=lambda v: str(v))
def test_principal_roles_rank(role: str | None, needed: str, allowed: bool) -> None:
    assert Principal("user", 1, role).has_role(needed) is allowed  # type: ignore[arg-type]
    assert Principal("device", 1, role).has_role(needed) is False  # type: ignore[arg-type]
