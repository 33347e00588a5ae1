"""``hadmc devices list|show|tag|revoke``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloud_service.fleetcli.client import UsageError
from cloud_service.fleetcli.common import connect, emit_json, friendly, show, table, when
from cloud_service.fleetcli.options import (
    JsonOpt,
    OffsetOpt,
    ServerOpt,
    TokenOpt,
    WideLimitOpt,
)

app = typer.Typer(no_args_is_help=True, help="Enrolled edge devices (REST API).")
DeviceId = Annotated[int, typer.Argument(min=1, help="Device id (`hadmc devices list`).")]


def state(d: dict[str, Any]) -> str:
    return "revoked" if d.get("revoked_at") else "active"


def versions(d: dict[str, Any]) -> list[str]:
    """``model-1:7`` per model the device runs (``-`` for none yet), primary first."""
    return [f"{m['model']}:{m['current_version_id'] or '-'}" for m in d.get("models") or []]


def _deployment(m: dict[str, Any]) -> str:
    return (f"version {m['current_version_id'] or '-'} (previous "
            f"{m['previous_version_id'] or '-'}; last report {m['phase'] or '-'})")


def _profile(d: dict[str, Any]) -> str:
    prof = d.get("profile") or {}
    return str(prof.get("name") or "-")


@app.command("list")
@friendly
def list_cmd(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
             offset: OffsetOpt = 0,
             limit: WideLimitOpt = 100) -> None:
    """List devices: id, name, profile, the version of each model (``model-1:7``, primary
    first), tags, status, last seen, state."""
    with connect(server, token) as api:
        page = api.get("/v1/devices", offset=offset, limit=limit)
    if as_json:
        emit_json(page)
        return
    rows = [[d["id"], d["name"], _profile(d), versions(d), d.get("tags"), d.get("status"),
             when(d.get("last_seen_at")), state(d)] for d in page["data"]]
    typer.echo(table(["ID", "NAME", "PROFILE", "VERSIONS", "TAGS", "STATUS", "LAST SEEN",
                      "STATE"], rows, right=["ID"]))
    if page["count"] > offset + len(rows):
        typer.echo(f"({len(rows)} of {page['count']}; see --offset and --limit)")


@app.command("show")
@friendly
def show_cmd(device_id: DeviceId, server: ServerOpt = None, token: TokenOpt = None,
             as_json: JsonOpt = False) -> None:
    """Show one device: profile, versions (the primary model's, then each model's), tags,
    bytes downloaded, last seen."""
    with connect(server, token) as api:
        d = api.get(f"/v1/devices/{device_id}")
    if as_json:
        emit_json(d)
        return
    prof = d.get("profile") or {}
    typer.echo(show([
        ("id", d["id"]), ("name", d["name"]), ("state", state(d)),
        ("status", d.get("status")),
        ("profile", _profile(d)), ("isa", prof.get("isa")),
        ("accelerator", prof.get("accelerator")), ("runtimes", prof.get("runtimes")),
        ("version", d.get("current_version_id")),
        ("previous version", d.get("previous_version_id")),
        *((f"model {m['model']}", _deployment(m)) for m in d.get("models") or []),
        ("tags", d.get("tags")), ("bytes downloaded", d.get("bytes_downloaded")),
        ("last seen", when(d.get("last_seen_at"))), ("enrolled", when(d.get("created_at"))),
        ("revoked", when(d.get("revoked_at")))]))


@app.command("tag")
@friendly
def tag_cmd(device_id: DeviceId,
            tags: Annotated[list[str] | None, typer.Option(
                "--tag", metavar="TAG", help="A tag (repeat for several); replaces the "
                                             "device's tags.")] = None,
            clear: Annotated[bool, typer.Option("--clear", help="Remove every tag.")] = False,
            server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Set a device's tags (rollouts select devices by tag)."""
    if bool(tags) == clear:
        raise UsageError("give --tag TAG (repeatable) or --clear")
    with connect(server, token) as api:
        d = api.patch(f"/v1/devices/{device_id}", {"tags": tags or []})
    if as_json:
        emit_json(d)
        return
    typer.echo(f"device {d['id']} ({d['name']}) tags: {', '.join(d['tags']) or '(none)'}")


@app.command("revoke")
@friendly
def revoke_cmd(device_id: DeviceId, server: ServerOpt = None, token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """Revoke a device: its credential stops working and rollouts skip it (to use it
    again, enroll it anew)."""
    with connect(server, token) as api:
        d = api.delete(f"/v1/devices/{device_id}")
    if as_json:
        emit_json(d)
        return
    typer.echo(f"revoked device {d['id']} ({d['name']})")
