"""/ui/devices/{id}: a device's profile, measured operator latency, update history and
the version it serves."""

from __future__ import annotations

import statistics
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from cloud_service.api.deps import PathId, SessionDep, SettingsDep
from cloud_service.db import utcnow
from cloud_service.services import desired as desired_svc
from cloud_service.services import devices as svc
from cloud_service.services import fleet as fleet_svc
from cloud_service.services import updates as updates_svc
from cloud_service.ui.lookups import flush_heartbeats, version_labels
from cloud_service.ui.render import error_page, render
from cloud_service.ui.session import ViewerDep

router = APIRouter(prefix="/ui/devices", include_in_schema=False)
HISTORY_PAGE = 50


def operator_rows(latency: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The reported per-operator table as rows: class, samples, median, min, max (ms)."""
    table = (latency or {}).get("operators") or {}
    rows = []
    for op, samples in sorted(table.items()):
        values = [float(v) for v in samples or [] if isinstance(v, int | float)]
        rows.append({"op": op, "n": len(values),
                     "median": statistics.median(values) if values else None,
                     "min": min(values, default=None), "max": max(values, default=None)})
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
    ids = {v for v in (dev.current_version_id, dev.previous_version_id,
                       (desired or {}).get("version_id"),
                       *(r.version_id for r in reports)) if v is not None}
    return render(request, "device.html", viewer, title=f"Device {dev.name}", nav="fleet",
                  dev=dev, state=state, profile=dev.profile or {},
                  operators=operator_rows(dev.latency), latency=dev.latency or {},
                  reports=reports, count=count, offset=offset, page=HISTORY_PAGE,
                  desired=desired, labels=version_labels(session, ids))
