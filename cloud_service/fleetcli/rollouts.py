"""``hadmc rollouts create|list|show|devices|events|pause|resume|abort|rollback|watch``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloud_service.fleetcli import rollout_view as view
from cloud_service.fleetcli.client import FleetClient, UsageError
from cloud_service.fleetcli.common import connect, emit_json, friendly, show
from cloud_service.fleetcli.live import watch
from cloud_service.fleetcli.options import (
    JsonOpt,
    OffsetOpt,
    ServerOpt,
    TokenOpt,
    WideLimitOpt,
)

app = typer.Typer(no_args_is_help=True, help="Roll versions out to devices in waves (REST API).")
RolloutId = Annotated[int, typer.Argument(min=1, help="Rollout id (`hadmc rollouts list`).")]
Interval = Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")]
STATES = ("active", "paused", "completed", "aborted", "rolled_back")


def parse_waves(text: str) -> list[float]:
    try:
        waves = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise UsageError(f"--waves must be comma-separated percentages such as 5,25,100, "
                         f"not {text!r}") from None
    if not waves:
        raise UsageError("--waves must name at least one percentage, e.g. 100")
    return waves


def selector(all_: bool, device_ids: list[int] | None, tags: list[str] | None
             ) -> dict[str, Any]:
    given = [s for s in ({"all": True} if all_ else None,
                         {"device_ids": device_ids} if device_ids else None,
                         {"tags": tags} if tags else None) if s]
    if len(given) != 1:
        raise UsageError("select devices with exactly one of --all, --device ID (repeatable) "
                         "or --tag TAG (repeatable)")
    return given[0]


def _print(r: dict[str, Any], api: FleetClient) -> None:
    typer.echo(show(view.details(r)))
    typer.echo("")
    typer.echo(view.waves_table(r))
    event = view.last_event(api, r["id"])
    if event is not None:
        typer.echo(f"\nlast event: {event['kind']}: {event.get('reason') or ''}")


def _watch(api: FleetClient, rollout_id: int, interval: float) -> None:
    """Redraw the waves until the rollout finishes; exit 0 when it completed, else 1."""
    r = watch(lambda: api.get(f"/v1/rollouts/{rollout_id}"), view.watch_lines,
              lambda r: r["state"] in view.FINISHED, interval)
    event = view.last_event(api, rollout_id)
    if event is not None:
        typer.echo(f"{r['state']}: {event.get('reason') or event['kind']}")
    raise typer.Exit(view.FINISHED[r["state"]])


@app.command("create")
@friendly
def create_cmd(
    version: Annotated[int, typer.Option("--version", min=1, help="Version id to roll out.")],
    all_: Annotated[bool, typer.Option("--all", help="Every device the version fits.")
                    ] = False,
    device: Annotated[list[int] | None, typer.Option(
        "--device", metavar="ID", min=1, help="A device id (repeatable).")] = None,
    tag: Annotated[list[str] | None, typer.Option(
        "--tag", metavar="TAG", help="Devices with this tag (repeatable: any of them).")
                   ] = None,
    waves: Annotated[str | None, typer.Option(
        help="Cumulative percentages, ending at 100 (server default 5,25,100).",
        metavar="5,25,100", show_default=False)] = None,
    wave_timeout: Annotated[int | None, typer.Option(
        min=1, metavar="SECONDS", help="A wave's time to report, health window included "
                                       "(server default 900).", show_default=False)] = None,
    max_failure_rate: Annotated[float | None, typer.Option(
        min=0, max=1, help="Abort above this share of failures (default 0.2).",
        show_default=False)] = None,
    success_threshold: Annotated[float | None, typer.Option(
        min=0, max=1, help="Advance at this share of successes (default 0.95).",
        show_default=False)] = None,
    max_latency_regression: Annotated[float | None, typer.Option(
        min=0, help="Abort above this median p50 regression, 0.25 = 25% (default 0.25).",
        show_default=False)] = None,
    min_devices_per_wave: Annotated[int | None, typer.Option(
        min=1, help="At least this many devices per wave (default 1).",
        show_default=False)] = None,
    no_rollback_on_abort: Annotated[bool, typer.Option(
        "--no-rollback-on-abort", help="An automatic abort leaves devices that succeeded "
                                       "on the version.")] = False,
    replace_model: Annotated[bool, typer.Option(
        "--replace-model", help="Also devices that run the model with another "
                                "interface (inputs and outputs).")] = False,
    watch_: Annotated[bool, typer.Option("--watch", help="Then watch it until it finishes.")
                      ] = False,
    interval: Interval = 1.0,
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
) -> None:
    """Create a rollout of a version to selected devices, in waves."""
    body: dict[str, Any] = {"version_id": version, "selector": selector(all_, device, tag)}
    optional = {"waves": parse_waves(waves) if waves is not None else None,
                "wave_timeout_seconds": wave_timeout, "max_failure_rate": max_failure_rate,
                "success_threshold": success_threshold,
                "max_latency_regression": max_latency_regression,
                "min_devices_per_wave": min_devices_per_wave,
                "rollback_on_abort": False if no_rollback_on_abort else None,
                "replace_model": True if replace_model else None}
    body.update({k: v for k, v in optional.items() if v is not None})
    with connect(server, token) as api:
        r = api.post("/v1/rollouts", body)
        if as_json:
            emit_json(r)
        else:
            typer.echo(f"created rollout {r['id']}: version {r['version_id']} to "
                       f"{view.devices(r)} devices ({view.selector(r)}) in "
                       f"{len(r['waves'])} waves")
            typer.echo(view.waves_table(r))
        if watch_:
            _watch(api, r["id"], interval)


@app.command("list")
@friendly
def list_cmd(state: Annotated[str | None, typer.Option(
                 help=f"Only rollouts in this state: {', '.join(STATES)}.")] = None,
             server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False,
             offset: OffsetOpt = 0,
             limit: WideLimitOpt = 50) -> None:
    """List rollouts, newest first: state, wave, devices, successes, failures."""
    if state is not None and state not in STATES:
        raise UsageError(f"--state must be one of {', '.join(STATES)}")
    with connect(server, token) as api:
        page = api.get("/v1/rollouts", state=state, offset=offset, limit=limit)
    if as_json:
        emit_json(page)
        return
    typer.echo(view.list_table(page["data"]))
    if page["count"] > offset + len(page["data"]):
        typer.echo(f"({len(page['data'])} of {page['count']}; see --offset and --limit)")


@app.command("show")
@friendly
def show_cmd(rollout_id: RolloutId, server: ServerOpt = None, token: TokenOpt = None,
             as_json: JsonOpt = False) -> None:
    """Show a rollout: settings, state, per-wave counts by status, its latest event."""
    with connect(server, token) as api:
        r = api.get(f"/v1/rollouts/{rollout_id}")
        if as_json:
            emit_json(r)
            return
        _print(r, api)


@app.command("devices")
@friendly
def devices_cmd(rollout_id: RolloutId, server: ServerOpt = None, token: TokenOpt = None,
                as_json: JsonOpt = False,
                offset: OffsetOpt = 0,
                limit: WideLimitOpt = 1000) -> None:
    """Per device in a rollout: wave, status, version it came from, bytes, p50, reason."""
    with connect(server, token) as api:
        page = api.get(f"/v1/rollouts/{rollout_id}/devices", offset=offset, limit=limit)
    if as_json:
        emit_json(page)
        return
    typer.echo(view.devices_table(page["data"]))


@app.command("events")
@friendly
def events_cmd(rollout_id: RolloutId, server: ServerOpt = None, token: TokenOpt = None,
               as_json: JsonOpt = False,
               offset: OffsetOpt = 0,
               limit: WideLimitOpt = 1000) -> None:
    """A rollout's decisions and actions with their reasons, oldest first."""
    with connect(server, token) as api:
        page = api.get(f"/v1/rollouts/{rollout_id}/events", offset=offset, limit=limit)
    if as_json:
        emit_json(page)
        return
    typer.echo(view.events_table(page["data"]))


def _action(action: str, doc: str) -> None:
    @app.command(action, help=doc)
    @friendly
    def command(rollout_id: RolloutId, server: ServerOpt = None, token: TokenOpt = None,
                as_json: JsonOpt = False) -> None:
        with connect(server, token) as api:
            r = api.post(f"/v1/rollouts/{rollout_id}/{action}")
        if as_json:
            emit_json(r)
            return
        typer.echo(f"rollout {r['id']}: {r['state']}")
        typer.echo(view.waves_table(r))


_action("pause", "Pause: assigned devices hold the version they run; no decisions until "
                 "resume.")
_action("resume", "Resume a paused rollout (the wave's timeout restarts).")
_action("abort", "Abort: pending devices never move; assigned devices that have not "
                 "succeeded go back to the version they had.")
_action("rollback", "Send every device that moved back to the version it had (signed "
                    "rollback orders).")


@app.command("watch")
@friendly
def watch_cmd(rollout_id: RolloutId, interval: Interval = 1.0, server: ServerOpt = None,
              token: TokenOpt = None) -> None:
    """Show the waves' progress, redrawn every second, until the rollout finishes.
    Exit 0 when it completed, 1 when it was aborted or rolled back."""
    with connect(server, token) as api:
        _watch(api, rollout_id, interval)
