"""/ui/rollouts: rollouts with their waves, devices and events; create one; pause, resume,
abort or roll back."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from cloud_service.api.deps import PathId, SessionDep, StoreDep
from cloud_service.errors import ServiceError
from cloud_service.models import Rollout, RolloutEvent
from cloud_service.schemas_rollouts import RolloutCreate
from cloud_service.services import auth as auth_svc
from cloud_service.services import rollouts as svc
from cloud_service.services import versions as versions_svc
from cloud_service.ui.charts import stacked
from cloud_service.ui.lookups import flush_heartbeats, model_names, version_labels
from cloud_service.ui.render import error_page, render
from cloud_service.ui.session import OperatorDep, OperatorFormDep, ViewerDep

router = APIRouter(prefix="/ui/rollouts", include_in_schema=False)
PAGE, DEVICE_PAGE = 50, 100
Action = Literal["pause", "resume", "abort", "rollback"]
STATES = ("active", "paused", "completed", "aborted", "rolled_back")
DEFAULTS = {name: field.default for name, field in RolloutCreate.model_fields.items()
            if name not in ("version_id", "selector")}


def waves_view(rollout: Rollout, counts: list[dict[str, int]]) -> list[dict[str, Any]]:
    """Per wave: its cumulative percentage, devices by status and the bar's segments."""
    return [{"index": i, "pct": pct, "counts": wave, "total": sum(wave.values()),
             "segments": stacked(wave), "current": i == rollout.current_wave}
            for i, (pct, wave) in enumerate(zip(rollout.waves, counts, strict=False))]


def who(event: RolloutEvent, names: dict[int, str]) -> str:
    """The user who asked for a decision, or "scheduler"."""
    details = event.details or {}
    if details.get("user_name"):
        return str(details["user_name"])
    user_id = details.get("user_id")
    if user_id is None:
        return "scheduler"
    return names.get(user_id, f"user {user_id}")


def actions(rollout: Rollout) -> list[str]:
    return [a for a, (allowed, _) in svc.TRANSITIONS.items() if rollout.state in allowed]


def _split(text: str) -> list[str]:
    return [p for p in text.replace(",", " ").split() if p]


def spec_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The body of ``POST /v1/rollouts`` from the form's fields (validated afterwards by
    ``RolloutCreate``, as the API does)."""
    kind = form.get("selector", "all")
    selector: dict[str, Any] = {"all": True}
    if kind == "tags":
        selector = {"tags": _split(form.get("tags", ""))}
    elif kind == "device_ids":
        selector = {"device_ids": _split(form.get("device_ids", ""))}
    spec: dict[str, Any] = {"version_id": form.get("version_id"), "selector": selector,
                            "waves": _split(form.get("waves", "")),
                            "rollback_on_abort": form.get("rollback_on_abort") == "on",
                            "replace_model": form.get("replace_model") == "on"}
    for name in ("min_devices_per_wave", "success_threshold", "max_failure_rate",
                 "max_latency_regression", "wave_timeout_seconds"):
        if form.get(name, "").strip():
            spec[name] = form[name].strip()
    return spec


def validation_message(exc: ValidationError) -> str:
    """The API's validation errors in words: ``field: message``."""
    parts = []
    for e in exc.errors():
        msg = str(e["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def _new_form(request: Request, session: SessionDep, viewer: OperatorDep,
              form: dict[str, str], status: int = 200, error: str | None = None
              ) -> HTMLResponse:
    versions, _ = versions_svc.list_versions(session=session, offset=0, limit=200)
    return render(request, "rollout_new.html", viewer, status=status, title="New rollout",
                  nav="rollouts", versions=versions, models=model_names(session), form=form,
                  defaults=DEFAULTS, error=error)


@router.get("", response_class=HTMLResponse)
def rollout_list(request: Request, session: SessionDep, viewer: ViewerDep,
                 state: Annotated[str | None, Query(max_length=20)] = None,
                 offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    state = state if state in STATES else None
    rows, count = svc.list_rollouts(session=session, offset=offset, limit=PAGE, state=state)
    counts = svc.wave_counts(session=session, rollouts=rows)
    totals = {r.id: {s: sum(w.get(s, 0) for w in counts[r.id])
                     for s in ("succeeded", "assigned", "failed", "pending", "skipped")}
              for r in rows}
    bars = {r.id: stacked({k: sum(w.get(k, 0) for w in counts[r.id])
                           for k in {s for w in counts[r.id] for s in w}}) for r in rows}
    return render(request, "rollouts.html", viewer, title="Rollouts", nav="rollouts",
                  rollouts=rows, count=count, offset=offset, page=PAGE, state=state,
                  states=STATES, totals=totals, bars=bars,
                  names=auth_svc.user_names(session=session),
                  labels=version_labels(session, {r.version_id for r in rows}))


@router.get("/new", response_class=HTMLResponse)
def new_rollout(request: Request, session: SessionDep, viewer: OperatorDep,
                version_id: Annotated[int | None, Query(ge=1)] = None) -> HTMLResponse:
    return _new_form(request, session, viewer,
                     {"version_id": str(version_id or ""), "selector": "all"})


@router.post("")
def create_rollout(request: Request, session: SessionDep, store: StoreDep,
                   viewer: OperatorDep, form: OperatorFormDep) -> Response:
    flush_heartbeats(request)
    try:
        body = RolloutCreate.model_validate(spec_from_form(form))
        row = svc.create_rollout(session=session, store=store, spec=body.model_dump(),
                                 created_by=viewer.principal.id)
    except ValidationError as e:
        session.rollback()
        return _new_form(request, session, viewer, form, 422, validation_message(e))
    except ServiceError as e:
        session.rollback()
        return _new_form(request, session, viewer, form, e.status, str(e))
    session.commit()
    return RedirectResponse(f"/ui/rollouts/{row.id}", status_code=303)


def _detail(request: Request, session: SessionDep, viewer: ViewerDep, rollout: Rollout,
            offset: int = 0, status: int = 200, error: str | None = None) -> HTMLResponse:
    counts = svc.wave_counts(session=session, rollouts=[rollout])[rollout.id]
    devices, device_count = svc.list_rollout_devices(session=session, rollout_id=rollout.id,
                                                     offset=offset, limit=DEVICE_PAGE)
    events, _ = svc.list_events(session=session, rollout_id=rollout.id, offset=0,
                                limit=1000)
    names = auth_svc.user_names(session=session)
    version = versions_svc.get_version(session=session, version_id=rollout.version_id)
    return render(request, "rollout.html", viewer, status=status,
                  title=f"Rollout {rollout.id}", nav="rollouts", r=rollout,
                  waves=waves_view(rollout, counts), devices=devices,
                  device_count=device_count, offset=offset, page=DEVICE_PAGE,
                  events=[(e, who(e, names)) for e in events], actions=actions(rollout),
                  creator=names.get(rollout.created_by or 0), version=version,
                  model=model_names(session).get(version.model_id) if version else None,
                  error=error)


@router.get("/{rollout_id}", response_class=HTMLResponse)
def rollout_page(rollout_id: PathId, request: Request, session: SessionDep,
                 viewer: ViewerDep, offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    row = svc.get_rollout(session=session, rollout_id=rollout_id)
    if row is None:
        return error_page(request, viewer, 404, f"rollout {rollout_id} does not exist")
    return _detail(request, session, viewer, row, offset)


@router.post("/{rollout_id}/{action}")
def steer(rollout_id: PathId, action: Action, request: Request, session: SessionDep,
          viewer: OperatorDep, form: OperatorFormDep) -> Response:
    """Pause, resume, abort or roll back (``services.rollouts.transition``, as the API)."""
    try:
        row = svc.transition(session=session, rollout_id=rollout_id, action=action,
                             by=viewer.principal.id)
    except ServiceError as e:
        session.rollback()
        current = svc.get_rollout(session=session, rollout_id=rollout_id)
        if current is None:
            return error_page(request, viewer, e.status, str(e))
        return _detail(request, session, viewer, current, status=e.status, error=str(e))
    if row is None:
        return error_page(request, viewer, 404, f"rollout {rollout_id} does not exist")
    session.commit()
    return RedirectResponse(f"/ui/rollouts/{rollout_id}", status_code=303)
