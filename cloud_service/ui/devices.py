"""/ui/devices/{id}: a device's profile, measured operator latency, update history and
the version it serves of each model."""

from __future__ import annotations

import statistics
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from cloud_service.api.deps import PathId, SessionDep, SettingsDep
from cloud_service.db import utcnow
from cloud_service.models import Device
from cloud_service.services import desired as desired_svc
from cloud_service.services import devices as svc
from cloud_service.services import feedback as feedback_svc
from cloud_service.services import fleet as fleet_svc
from cloud_service.services import updates as updates_svc
from cloud_service.tasks.targets import TERM_PREFIX
from cloud_service.ui.lookups import flush_heartbeats, model_names, version_labels
from cloud_service.ui.render import error_page, render
from cloud_service.ui.session import ViewerDep

router = APIRouter(prefix="/ui/devices", include_in_schema=False)
HISTORY_PAGE = 50


def operator_rows(latency: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The reported per-operator table as rows: class, samples, median, min, max (ms).
    The whole-model term's entries are not operators (``term_rows``)."""
    table = (latency or {}).get("operators") or {}
    rows = []
    for op, samples in sorted(table.items()):
        if op.startswith(TERM_PREFIX):
            continue
        values = [float(v) for v in samples or [] if isinstance(v, int | float)]
        rows.append({"op": op, "n": len(values),
                     "median": statistics.median(values) if values else None,
                     "min": min(values, default=None), "max": max(values, default=None)})
    return rows


def term_rows(latency: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The device's whole-model term per precision, ``[c, k, j]`` (``model|<precision>``
    entries of its table): whole ms = c + k x the layers' MAC parts + j x their constants."""
    table = (latency or {}).get("operators") or {}
    rows = []
    for key, value in sorted(table.items()):
        if not key.startswith(TERM_PREFIX) or not isinstance(value, list):
            continue
        c, k, j = ([float(v) if isinstance(v, int | float) else None for v in value]
                   + [None] * 3)[:3]
        rows.append({"precision": key[len(TERM_PREFIX):], "c": c, "k": k, "j": j})
    return rows


@router.get("/{device_id}", response_class=HTMLResponse)
def device_page(device_id: PathId, request: Request, session: SessionDep,
                settings: SettingsDep, viewer: ViewerDep,
                offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    flush_heartbeats(request)
    dev = svc.get_device(session=session, device_id=device_id)
    if dev is None:
        return error_page(request, viewer, 404, f"device {device_id} does not exist")
    state = fleet_svc.device_states(
        session=session, now=utcnow(), offline_after_seconds=fleet_svc.offline_threshold(
            settings), devices=[dev]).get(dev.id)
    reports, count = updates_svc.list_update_reports(session=session, device_id=device_id,
                                                     offset=offset, limit=HISTORY_PAGE)
    desired = desired_svc.desired_state(session=session, device_id=device_id,
                                        key=request.app.state.signing_key)
    models = model_rows(dev, desired, model_names(session))
    shown = [dev.current_version_id, dev.previous_version_id,
             (desired or {}).get("version_id"), *(r.version_id for r in reports)]
    for m in models:
        shown += [m["current"], m["previous"], (m["want"] or {}).get("version_id")]
    ids = {v for v in shown if v is not None}
    correction, _ = feedback_svc.correction_for(session=session, device_ids=[dev.id],
                                                model_id=None)
    return render(request, "device.html", viewer, title=f"Device {dev.name}", nav="fleet",
                  dev=dev, state=state, profile=dev.profile or {},
                  operators=operator_rows(dev.latency), terms=term_rows(dev.latency),
                  latency=dev.latency or {}, correction=correction,
                  reports=reports, count=count, offset=offset, page=HISTORY_PAGE,
                  desired=desired, models=models, labels=version_labels(session, ids))


def model_rows(dev: Device, desired: dict[str, Any] | None, names: dict[int, str]
               ) -> list[dict[str, Any]]:
    """One row per model the device runs or a rollout names for it (primary first): its
    current and previous version, last reported phase, and what it should run."""
    wanted = {e["model_id"]: e for e in (desired or {}).get("models", [])}
    rows = [{"model_id": d.model_id, "model": d.model, "name": names.get(d.model_id),
             "current": d.current_version_id, "previous": d.previous_version_id,
             "phase": d.phase, "primary": i == 0, "want": wanted.pop(d.model_id, None)}
            for i, d in enumerate(dev.deployments)]
    rows += [{"model_id": mid, "model": e["model"], "name": names.get(mid), "current": None,
              "previous": None, "phase": None, "primary": False, "want": e}
             for mid, e in sorted(wanted.items())]
    return rows
