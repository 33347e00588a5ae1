"""``hadmc token create|list|revoke`` over REST (``/v1/tokens``): used when ``--server``
or ``HADMC_SERVER`` is given; without either the commands work on the local database
(``cloud_service.cli``)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import typer

from cloud_service.fleetcli.client import ApiError, FleetError, UsageError
from cloud_service.fleetcli.common import connect, emit_json, friendly, settings, table, when


def _given(ctx: typer.Context, option: str) -> bool:
    """Whether the command line (not the default) set the parameter ``option``."""
    source = ctx.get_parameter_source(option)
    return source is not None and source.name != "DEFAULT"


@friendly
def remote(server: str | None, token: str | None, as_json: bool) -> str | None:
    """The server to talk to, or None for the local database (where ``--token`` and
    ``--json`` mean nothing)."""
    url = server or settings().server or None
    if url is None and (token or as_json):
        raise UsageError("--token and --json are for a server: add --server URL (or set "
                         "HADMC_SERVER); without one `hadmc token` works on the local "
                         "database")
    return url


def _roles_unknown(e: ApiError) -> bool:
    errors = (e.body or {}).get("errors") if isinstance(e.body, dict) else None
    return e.status == 422 and any(
        "role" in [str(x) for x in err.get("loc", [])] for err in errors or []
        if isinstance(err, dict))


def state(t: dict[str, Any]) -> str:
    """active, expired or revoked (as ``hadmc token list`` says locally)."""
    if t.get("revoked_at"):
        return "revoked"
    try:
        expires = datetime.fromisoformat(str(t.get("expires_at")).replace("Z", "+00:00"))
    except ValueError:  # never expires (null)
        return "active"
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=timezone.utc)
    return "expired" if expires <= datetime.now(timezone.utc) else "active"


@friendly
def create(ctx: typer.Context, server: str, token: str | None, *, name: str,
           expires_days: int | None, role: str, as_json: bool) -> None:
    """Create an API token of the calling user and print it (shown once). The role goes
    to the server only when given on the command line (the server has its own default)."""
    if _given(ctx, "user"):
        raise UsageError("--user is for the local database; over REST the token belongs to "
                         "the user of --token")
    body: dict[str, Any] = {"name": name, "expires_in_days": expires_days}
    if _given(ctx, "role"):
        body["role"] = role
    with connect(server, token) as api:
        try:
            t = api.post("/v1/tokens", body)
        except ApiError as e:
            if "role" in body and _roles_unknown(e):
                raise FleetError(f"the server at {api.server} does not know token roles "
                                 f"(it answered 422: {e.detail}); leave out --role or "
                                 "upgrade the server") from None
            raise
    if as_json:
        emit_json(t)
        return
    typer.echo(t["token"])


@friendly
def list_(server: str, token: str | None, *, user: str, as_json: bool) -> None:
    """List the calling user's API tokens (never the secrets)."""
    if user:
        raise UsageError("--user is for the local database; over REST you see the tokens "
                         "of the user of --token")
    with connect(server, token) as api:
        page = api.get("/v1/tokens", limit=500)
    if as_json:
        emit_json(page)
        return
    rows = page["data"]
    with_role = any("role" in t for t in rows)
    headers = ["ID", "NAME", *(["ROLE"] if with_role else []), "CREATED", "EXPIRES", "STATE"]
    typer.echo(table(headers, [
        [t["id"], t.get("name") or "", *([t.get("role")] if with_role else []),
         when(t.get("created_at")), when(t.get("expires_at")) if t.get("expires_at")
         else "never", state(t)] for t in rows], right=["ID"]))


@friendly
def revoke(server: str, token: str | None, token_id: int, *, as_json: bool) -> None:
    """Revoke one of the calling user's API tokens."""
    with connect(server, token) as api:
        t = api.delete(f"/v1/tokens/{token_id}")
    if as_json:
        emit_json(t)
        return
    typer.echo(f"revoked API token {t['id']}")
