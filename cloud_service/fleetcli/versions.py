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


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.3g} ms"


def _latency(v: dict[str, Any]) -> list[tuple[str, Any]]:
    """Predicted latency with its source, what devices measured, and the error."""
    lat = v.get("latency") or {}
    if not lat:
        return []
    pred = _ms(lat.get("predicted_ms"))
    measured = _ms(lat.get("measured_p50_ms"))
    if measured is not None:
        p95 = _ms(lat.get("measured_p95_ms"))
        measured += f" median p50 of {lat.get('devices')} device(s)" + \
            (f", median p95 {p95}" if p95 else "")
    error = lat.get("error_pct")
    source = lat.get("predicted_source") or "source not recorded"
    return [("predicted latency", f"{pred} ({source})" if pred else None),
            ("measured latency", measured),
            ("prediction error", f"{error:+.1f} %" if error is not None else None)]


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
    """Show one version: model, number, profile, hash, size, report summary, predicted
    latency (and its source) against the median that devices measured."""
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
        *_latency(v), ("created", when(v.get("created_at")))]))
