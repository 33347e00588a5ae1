"""/ui: the fleet overview (devices by model, version and state; filter by tag). A device
that runs several models is counted under the version of each."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from cloud_service.api.deps import SessionDep, SettingsDep
from cloud_service.db import utcnow
from cloud_service.services import fleet as fleet_svc
from cloud_service.services import rollouts as rollouts_svc
from cloud_service.ui.lookups import flush_heartbeats, version_labels
from cloud_service.ui.render import render
from cloud_service.ui.session import ViewerDep

router = APIRouter(prefix="/ui", include_in_schema=False)
PAGE = 100


@router.get("", response_class=HTMLResponse)
def overview(request: Request, session: SessionDep, settings: SettingsDep, viewer: ViewerDep,
             tag: Annotated[str | None, Query(max_length=64)] = None,
             offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    flush_heartbeats(request)
    tag = tag.strip() if tag and tag.strip() else None
    now = utcnow()
    threshold = fleet_svc.offline_threshold(settings)
    devices = rollouts_svc.select_devices(session, {"tags": [tag]} if tag else {})
    states = fleet_svc.device_states(session=session, now=now, offline_after_seconds=threshold,
                                     devices=devices)
    if tag is None:  # the whole fleet: the very numbers of the API and /metrics
        counts = fleet_svc.fleet_counts(session=session, now=now,
                                        offline_after_seconds=threshold)
        totals = {"total": counts["total"], **counts["states"]}
    else:
        totals = {"total": len(devices), **Counter(states.values())}
    running: dict[int, list[int | None]] = {
        d.id: [dep.current_version_id for dep in d.deployments
               if dep.current_version_id is not None] for d in devices}
    labels = version_labels(session, {v for vids in running.values() for v in vids
                                      if v is not None})
    matrix: dict[int | None, Counter[str]] = {}
    for dev in devices:  # a device counts once for each model it runs
        for vid in running[dev.id] or [None]:
            matrix.setdefault(vid, Counter())[states[dev.id]] += 1
    rows = sorted(matrix.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    all_tags = sorted({t for d in rollouts_svc.select_devices(session, {}) for t in d.tags})
    return render(request, "fleet.html", viewer, title="Fleet", nav="fleet", tag=tag,
                  tags=all_tags, totals=totals, states=fleet_svc.STATES, matrix=rows,
                  labels=labels, devices=devices[offset:offset + PAGE], device_states=states,
                  offset=offset, page=PAGE, count=len(devices),
                  offline_after=threshold)
