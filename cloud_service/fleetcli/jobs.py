"""``hadmc jobs submit|list|show|watch|cancel``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cloud_service.fleetcli.client import FleetClient, UsageError
from cloud_service.fleetcli.common import cell, connect, emit_json, friendly, show, table, when
from cloud_service.fleetcli.live import watch
from cloud_service.fleetcli.options import JsonOpt, LimitOpt, OffsetOpt, ServerOpt, TokenOpt

app = typer.Typer(no_args_is_help=True, help="Compression jobs (REST API).")
JobId = Annotated[int, typer.Argument(min=1, help="Job id (`hadmc jobs list`).")]
Interval = Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")]
FINISHED = {"succeeded": 0, "failed": 1, "cancelled": 1}  # state -> exit code
STATES = ("queued", "running", *FINISHED)
LOG_LINES = 5


def progress(j: dict[str, Any]) -> str:
    stage, done, total = j.get("stage"), j.get("done") or 0, j.get("total") or 0
    if not stage:
        return "-"
    return f"{stage} {done}/{total}" if total else stage


def _percent(j: dict[str, Any]) -> str:
    pct = j.get("percent")
    return f"{pct:.0f}%" if isinstance(pct, (int, float)) else ""


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise UsageError(f"cannot read --config {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"--config {path} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path} must hold a JSON object (per-technique overrides, "
                         "e.g. {\"quantize\": {\"calib_samples\": 256}})")
    return data


def outcome(j: dict[str, Any]) -> str:
    if j["state"] == "succeeded":
        return f"succeeded: version {j.get('version_id')}"
    if j["state"] == "failed":
        return f"failed: {j.get('error') or 'no error recorded'}"
    return "cancelled"


def watch_lines(j: dict[str, Any], elapsed: float) -> list[str]:
    head = (f"job {j['id']}  {j['state']}  {progress(j)}  {_percent(j)}".rstrip()
            + f"  ({elapsed:.0f} s)")
    tail = (j.get("log_tail") or "").strip().splitlines()[-LOG_LINES:]
    return [head, *(f"  {line}" for line in tail)]


def _watch(api: FleetClient, job_id: int, interval: float) -> None:
    """Redraw progress and log tail until the job finishes; exit 0 when it succeeded."""
    j = watch(lambda: api.get(f"/v1/jobs/{job_id}"), watch_lines,
              lambda j: j["state"] in FINISHED, interval)
    typer.echo(outcome(j))
    raise typer.Exit(FINISHED[j["state"]])


@app.command("submit")
@friendly
def submit_cmd(
    model: Annotated[int, typer.Option("--model", min=1, help="Base model id (safetensors).")],
    dataset: Annotated[int, typer.Option("--dataset", min=1, help="Dataset id.")],
    profile: Annotated[str | None, typer.Option(
        "--profile", help="Target: a built-in hardware profile name.",
        show_default=False)] = None,
    device: Annotated[int | None, typer.Option(
        "--device", min=1, help="Target: an enrolled device (its measured operator latency "
                                "table and its runtime).", show_default=False)] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", help="Target: enrolled devices with this tag (repeat for any of several); "
                      "their tables combined, the slowest per operator.",
        show_default=False)] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(
        min=0, help="Points of accuracy the result may lose.", show_default=False)] = None,
    latency_budget_ms: Annotated[float | None, typer.Option(
        min=0, help="Latency the result must meet.", show_default=False)] = None,
    size_budget_mb: Annotated[float | None, typer.Option(
        min=0, help="Size the result must meet.", show_default=False)] = None,
    time_budget_s: Annotated[float | None, typer.Option(
        min=0, help="Wall seconds the compression may take.", show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE.json", help="Per-technique overrides (prune, distill, "
                                              "fuse, quantize, measure, ...).")] = None,
    watch_: Annotated[bool, typer.Option("--watch", help="Then watch it until it finishes.")
                      ] = False,
    interval: Interval = 1.0,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Submit a compression job of a model for a hardware profile, a device or devices by
    tag (exactly one of --profile, --device, --tag)."""
    given = [t for t, v in (("profile", profile), ("device", device), ("devices", tag)) if v]
    if len(given) != 1:
        raise UsageError("give exactly one target: --profile NAME, --device ID or --tag TAG")
    target: dict[str, Any] = {"profile": profile} if profile else \
        {"device": device} if device else {"devices": {"tags": list(tag or [])}}
    constraints = {k: v for k, v in (("max_accuracy_drop", max_accuracy_drop),
                                     ("latency_budget_ms", latency_budget_ms),
                                     ("size_budget_mb", size_budget_mb),
                                     ("time_budget_s", time_budget_s)) if v is not None}
    body = {"model_id": model, "dataset_id": dataset, "target": target,
            "constraints": constraints, "config": read_config(config) if config else {}}
    with connect(server, token) as api:
        j = api.post("/v1/jobs", body)
        if as_json:
            emit_json(j)
        else:
            typer.echo(f"submitted job {j['id']} ({j['state']})")
        if watch_:
            _watch(api, j["id"], interval)


@app.command("list")
@friendly
def list_cmd(state: Annotated[str | None, typer.Option(
                 help=f"Only jobs in this state: {', '.join(STATES)}.")] = None,
             model: Annotated[int | None, typer.Option(
                 "--model", min=1, help="Only jobs of this model id.")] = None,
             server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
             offset: OffsetOpt = 0,
             limit: LimitOpt = 50) -> None:
    """List jobs, newest first: state, progress, the version each produced."""
    if state is not None and state not in STATES:
        raise UsageError(f"--state must be one of {', '.join(STATES)}")
    with connect(server, token) as api:
        page = api.get("/v1/jobs", state=state, model_id=model, offset=offset, limit=limit)
    if as_json:
        emit_json(page)
        return
    rows = [[j["id"], j["model_id"], j["dataset_id"], j["profile"], j["state"], progress(j),
             j.get("version_id"), when(j.get("created_at"))] for j in page["data"]]
    typer.echo(table(["ID", "MODEL", "DATASET", "PROFILE", "STATE", "PROGRESS", "VERSION",
                      "CREATED"], rows, right=["ID", "MODEL", "DATASET", "VERSION"]))
    if page["count"] > offset + len(rows):
        typer.echo(f"({len(rows)} of {page['count']}; see --offset and --limit)")


@app.command("show")
@friendly
def show_cmd(job_id: JobId, server: ServerOpt = None, token: TokenOpt = None,
             as_json: JsonOpt = False) -> None:
    """Show a job: state, progress, timings per stage, error, version, log tail."""
    with connect(server, token) as api:
        j = api.get(f"/v1/jobs/{job_id}")
    if as_json:
        emit_json(j)
        return
    timings = " ".join(f"{k}={cell(v)}s" for k, v in (j.get("timings") or {}).items())
    typer.echo(show([
        ("id", j["id"]), ("model", j["model_id"]), ("dataset", j["dataset_id"]),
        ("profile", j["profile"]), ("state", j["state"]),
        ("progress", f"{progress(j)} {_percent(j)}".strip()),
        ("attempts", j.get("attempts")), ("cancel requested", j.get("cancel_requested")),
        ("timings", timings or None), ("error", j.get("error")),
        ("version", j.get("version_id")), ("created", when(j.get("created_at"))),
        ("started", when(j.get("started_at"))), ("finished", when(j.get("finished_at")))]))
    if (j.get("log_tail") or "").strip():
        typer.echo("\nlog tail:\n" + j["log_tail"].rstrip())


@app.command("watch")
@friendly
def watch_cmd(job_id: JobId, interval: Interval = 1.0, server: ServerOpt = None,
              token: TokenOpt = None) -> None:
    """Show stage, progress and log tail, redrawn every second, until the job finishes.
    Exit 0 when it succeeded, 1 when it failed or was cancelled."""
    with connect(server, token) as api:
        _watch(api, job_id, interval)


@app.command("cancel")
@friendly
def cancel_cmd(job_id: JobId, server: ServerOpt = None, token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """Cancel a job: a queued job at once, a running one at its next progress report."""
    with connect(server, token) as api:
        j = api.post(f"/v1/jobs/{job_id}/cancel")
    if as_json:
        emit_json(j)
        return
    if j["state"] == "cancelled":
        typer.echo(f"job {j['id']}: cancelled")
    else:
        typer.echo(f"job {j['id']}: cancel requested ({j['state']}; it stops at its next "
                   "progress report)")
