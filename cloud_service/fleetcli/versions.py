"""``hadmc versions list|show``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloud_service.fleetcli.common import cell, connect, emit_json, friendly, show, table, when
from cloud_service.fleetcli.options import JsonOpt, LimitOpt, OffsetOpt, ServerOpt, TokenOpt

app = typer.Typer(no_args_is_help=True, help="Published model versions (REST API).")


def size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KB" if n < 1024**2 else f"{n / 1024**2:.1f} MB"


def _summary(v: dict[str, Any]) -> str:
    return " ".join(f"{k}={cell(x)}" for k, x in (v.get("summary") or {}).items()
                    if isinstance(x, (int, float, str)))


@app.command("list")
@friendly
def list_cmd(model: Annotated[int | None, typer.Option(
                 "--model", min=1, help="Only versions of this model id.")] = None,
             server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
             offset: OffsetOpt = 0,
             limit: LimitOpt = 50) -> None:
    """List versions: id, model, number, profile, size, constraints met, job, created."""
    with connect(server, token) as api:
        page = api.get("/v1/versions", model_id=model, offset=offset, limit=limit)
    if as_json:
        emit_json(page)
        return
    rows = [[v["id"], v["model_id"], v["number"], v["profile"], size(v.get("onnx_size")),
             v.get("constraints_met"), v.get("job_id"), when(v.get("created_at"))]
            for v in page["data"]]
    typer.echo(table(["ID", "MODEL", "NUMBER", "PROFILE", "SIZE", "MET", "JOB", "CREATED"],
                     rows, right=["ID", "MODEL", "NUMBER", "SIZE", "JOB"]))
    if page["count"] > offset + len(rows):
        typer.echo(f"({len(rows)} of {page['count']}; see --offset and --limit)")


@app.command("show")
@friendly
def show_cmd(version_id: Annotated[int, typer.Argument(min=1, help="Version id.")],
             server: ServerOpt = None, token: TokenOpt = None,
             as_json: JsonOpt = False) -> None:
    """Show one version: model, number, profile, hash, size, report summary."""
    with connect(server, token) as api:
        v = api.get(f"/v1/versions/{version_id}")
    if as_json:
        emit_json(v)
        return
    typer.echo(show([
        ("id", v["id"]), ("model", v["model_id"]), ("number", v["number"]),
        ("profile", v["profile"]), ("job", v.get("job_id")),
        ("onnx hash", v.get("onnx_hash")), ("size", size(v.get("onnx_size"))),
        ("constraints met", v.get("constraints_met")), ("summary", _summary(v) or None),
        ("created", when(v.get("created_at")))]))
