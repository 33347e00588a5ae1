"""User API tokens: expiry, listing and revocation (REST and ``hadmc token``), and the
bootstrap token from ``HADMC_ADMIN_TOKEN`` following the variable across restarts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import update
from typer.testing import CliRunner

from cloud_service import migrate
from cloud_service.app import create_app
from cloud_service.cli import register
from cloud_service.db import session_scope, utcnow
from cloud_service.models import ApiToken
from cloud_service.security import hash_token
from cloud_service.settings import Settings, get_settings
from tests.cloud_service.conftest import make_settings, new_user_token

ADMIN_A = "first-admin-token-0123456789abcdef"
ADMIN_B = "second-admin-token-0123456789abcdef"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expire(settings: Settings, token: str) -> None:
    with session_scope(settings.database_url) as s:
        s.execute(update(ApiToken).where(ApiToken.token_hash == hash_token(token))
                  .values(expires_at=utcnow() - timedelta(seconds=1)))


def test_expired_token_is_401(client: TestClient, settings: Settings) -> None:
    token = new_user_token(settings, "expiring")
    assert client.get("/v1/profiles", headers=bearer(token)).status_code == 200
    expire(settings, token)
    r = client.get("/v1/profiles", headers=bearer(token))
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "expired" in r.json()["detail"]


def test_created_token_expires_after_the_days_asked(client: TestClient,
                                                    auth: dict[str, str]) -> None:
    r = client.post("/v1/tokens", json={"name": "ci", "expires_in_days": 30}, headers=auth)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["token"].startswith("hadmc_u_") and body["name"] == "ci"
    left = datetime.fromisoformat(body["expires_at"]) - utcnow()
    assert timedelta(days=29, hours=23) < left <= timedelta(days=30)
    assert client.get("/v1/profiles", headers=bearer(body["token"])).status_code == 200
    never = client.post("/v1/tokens", json={}, headers=auth).json()
    assert never["expires_at"] is None


def test_revoked_token_is_401_and_revoking_twice_is_409(client: TestClient,
                                                        auth: dict[str, str]) -> None:
    made = client.post("/v1/tokens", json={"name": "laptop"}, headers=auth).json()
    mine = bearer(made["token"])
    assert client.get("/v1/models", headers=mine).status_code == 200
    r = client.delete(f"/v1/tokens/{made['id']}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["revoked_at"] is not None and "token" not in r.json()
    assert client.get("/v1/models", headers=mine).status_code == 401
    assert client.delete(f"/v1/tokens/{made['id']}", headers=auth).status_code == 409


def test_a_token_can_revoke_itself(client: TestClient, auth: dict[str, str]) -> None:
    made = client.post("/v1/tokens", json={}, headers=auth).json()
    mine = bearer(made["token"])
    assert client.delete(f"/v1/tokens/{made['id']}", headers=mine).status_code == 200
    assert client.get("/v1/tokens", headers=mine).status_code == 401


def test_list_shows_own_tokens_without_secrets(client: TestClient, settings: Settings,
                                               auth: dict[str, str]) -> None:
    made = client.post("/v1/tokens", json={"name": "listed"}, headers=auth).json()
    other = bearer(new_user_token(settings, "mallory"))
    other_made = client.post("/v1/tokens", json={"name": "mallory's"}, headers=other).json()
    r = client.get("/v1/tokens", params={"limit": 500}, headers=auth)
    assert r.status_code == 200, r.text
    page = r.json()
    ids = [t["id"] for t in page["data"]]
    assert made["id"] in ids and other_made["id"] not in ids
    assert page["count"] == len(ids) and ids == sorted(ids, reverse=True)
    assert all(set(t) == {"id", "name", "role", "expires_at", "revoked_at", "created_at"}
               for t in page["data"])
    assert made["token"] not in r.text and hash_token(made["token"]) not in r.text
    # Another user's token is not found, and keeps working.
    assert client.delete(f"/v1/tokens/{other_made['id']}", headers=auth).status_code == 404
    assert client.get("/v1/tokens", headers=bearer(other_made["token"])).status_code == 200


def test_device_credential_cannot_manage_tokens(client: TestClient,
                                                auth: dict[str, str]) -> None:
    from tests.cloud_service.conftest import enroll

    cred = bearer(enroll(client, auth, "no-tokens")["credential"])
    assert client.get("/v1/tokens", headers=cred).status_code == 403
    assert client.post("/v1/tokens", json={}, headers=cred).status_code == 403


def _status(tmp: Path, admin: str | None, tokens: list[str]) -> list[int]:
    """Start the server with ``HADMC_ADMIN_TOKEN`` = ``admin``; the status of
    ``GET /v1/models`` with each token."""
    with TestClient(create_app(make_settings(tmp, admin_token=admin))) as c:
        return [c.get("/v1/models", headers=bearer(t)).status_code for t in tokens]


def test_admin_token_follows_the_variable_across_restarts(tmp_path: Path) -> None:
    migrate.upgrade(make_settings(tmp_path).database_url)
    assert _status(tmp_path, ADMIN_A, [ADMIN_A, ADMIN_B]) == [200, 401]
    with TestClient(create_app(make_settings(tmp_path, admin_token=ADMIN_A))) as c:
        r = c.post("/v1/tokens", json={"role": "admin"}, headers=bearer(ADMIN_A))
        assert r.status_code == 201, r.text  # the bootstrap token is an admin's
        r = c.delete(f"/v1/tokens/{r.json()['id']}", headers=bearer(ADMIN_A))
        assert r.status_code == 200, r.text
    assert _status(tmp_path, ADMIN_A, [ADMIN_A]) == [200]  # a restart keeps it
    assert _status(tmp_path, ADMIN_B, [ADMIN_A, ADMIN_B]) == [401, 200]  # changed
    assert _status(tmp_path, None, [ADMIN_A, ADMIN_B]) == [401, 401]  # removed
    assert _status(tmp_path, ADMIN_A, [ADMIN_A]) == [401]  # a revoked value stays revoked
    # Tokens made with `hadmc token create` are not touched.
    user = new_user_token(make_settings(tmp_path), "admin")
    assert _status(tmp_path, None, [user]) == [200]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    for k, v in {"HADMC_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
                 "HADMC_ARTIFACT_DIR": str(tmp_path / "artifacts"),
                 "HADMC_SIGNING_KEY_FILE": str(tmp_path / "signing.key")}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    migrate.upgrade(get_settings().database_url)
    yield CliRunner()
    get_settings.cache_clear()


def _hadmc(runner: CliRunner, *args: str) -> tuple[int, str]:
    app = typer.Typer()
    register(app)
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_token_cli_creates_lists_and_revokes(cli: CliRunner) -> None:
    from cloud_service.services.auth import resolve

    code, out = _hadmc(cli, "token", "create", "--user", "carol", "--name", "ci",
                       "--expires-days", "7")
    assert code == 0, out
    token = out.strip()
    code, out = _hadmc(cli, "token", "create", "--user", "dave")
    assert code == 0, out
    code, listing = _hadmc(cli, "token", "list")
    assert code == 0, listing
    lines = listing.splitlines()
    assert lines[0].split() == ["ID", "USER", "ROLE", "NAME", "CREATED", "EXPIRES", "STATE"]
    carol = next(line for line in lines if " carol " in line)
    assert carol.split()[0] == "1" and " ci " in carol and carol.endswith("active")
    assert carol.split()[2] == "operator"  # the default role
    expires = (utcnow() + timedelta(days=7)).strftime("%Y-%m-%d")
    assert expires in carol and "never" in next(line for line in lines if " dave " in line)
    assert token not in listing
    code, only = _hadmc(cli, "token", "list", "--user", "dave")
    assert code == 0 and "carol" not in only and "dave" in only

    url = get_settings().database_url
    with session_scope(url) as s:
        assert resolve(session=s, token=token) is not None
    code, out = _hadmc(cli, "token", "revoke", "1")
    assert code == 0 and "revoked API token 1" in out
    with session_scope(url) as s:
        assert resolve(session=s, token=token) is None
    code, out = _hadmc(cli, "token", "revoke", "1")
    assert code == 1 and "already revoked" in out
    code, out = _hadmc(cli, "token", "revoke", "99")
    assert code == 1 and "does not exist" in out
    assert _hadmc(cli, "token", "list")[1].splitlines()[2].endswith("revoked")


def test_token_cli_list_shows_expired(cli: CliRunner) -> None:
    code, token = _hadmc(cli, "token", "create", "--expires-days", "1")
    assert code == 0
    expire(get_settings(), token.strip())
    assert _hadmc(cli, "token", "list")[1].splitlines()[1].endswith("expired")


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_token_cli_creates_a_token_of_the_role_asked(cli: CliRunner, role: str) -> None:
    from cloud_service.services.auth import resolve

    code, out = _hadmc(cli, "token", "create", "--user", "erin", "--role", role)
    assert code == 0, out
    with session_scope(get_settings().database_url) as s:
        principal = resolve(session=s, token=out.strip())
    assert principal is not None and (principal.role, principal.name) == (role, "erin")
    assert _hadmc(cli, "token", "list")[1].splitlines()[1].split()[2] == role


def test_token_cli_refuses_an_unknown_role(cli: CliRunner) -> None:
    code, out = _hadmc(cli, "token", "create", "--role", "root")
    assert code == 2 and "root" in out
