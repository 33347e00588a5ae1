"""/ui/versions: compressed versions, each with its report, accuracy/latency plot,
per-layer decisions and predicted against measured latency."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from cloud_service.api.deps import PathId, SessionDep, StoreDep
from cloud_service.errors import ServiceError
from cloud_service.services import updates as updates_svc
from cloud_service.services import versions as svc
from cloud_service.ui.charts import scatter
from cloud_service.ui.lookups import model_names
from cloud_service.ui.render import HEADERS, error_page, render
from cloud_service.ui.session import ViewerDep

router = APIRouter(prefix="/ui/versions", include_in_schema=False)
PAGE = 50


def _chosen_estimate(report: dict[str, Any]) -> float | None:
    """The latency model's estimate of the chosen candidate (the search's figure)."""
    chosen = next((c for c in report.get("candidates") or []
                   if isinstance(c, dict) and c.get("chosen")), {})
    value = chosen.get("estimated_ms")
    return value if isinstance(value, (int, float)) else None


@router.get("", response_class=HTMLResponse)
def version_list(request: Request, session: SessionDep, viewer: ViewerDep,
                 offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    rows, count = svc.list_versions(session=session, offset=offset, limit=PAGE)
    return render(request, "versions.html", viewer, title="Versions", nav="versions",
                  versions=rows, count=count, offset=offset, page=PAGE,
                  models=model_names(session))


@router.get("/{version_id}", response_class=HTMLResponse)
def version_page(version_id: PathId, request: Request, session: SessionDep,
                 store: StoreDep, viewer: ViewerDep) -> HTMLResponse:
    ver = svc.get_version(session=session, version_id=version_id)
    if ver is None:
        return error_page(request, viewer, 404, f"model version {version_id} does not exist")
    report: dict[str, Any] = {}
    report_error = None
    try:
        report = svc.read_report(store=store, version=ver)
    except ServiceError as e:
        report_error = str(e)
    return render(request, "version.html", viewer, title=f"Version {ver.id}",
                  nav="versions", ver=ver, model=model_names(session).get(ver.model_id, "?"),
                  report=report, report_error=report_error, plot=scatter(report),
                  layers=[r for r in report.get("layers") or [] if isinstance(r, dict)],
                  latency=updates_svc.version_latency(session=session, version_id=version_id,
                                                      report=report),
                  estimated_ms=_chosen_estimate(report),
                  png=bool((ver.summary or {}).get("report_png_hash")))


@router.get("/{version_id}/report.png")
def report_png(version_id: PathId, request: Request, session: SessionDep, store: StoreDep,
               viewer: ViewerDep) -> Response:
    """The plot the compression job drew (accuracy against latency of every candidate)."""
    ver = svc.get_version(session=session, version_id=version_id)
    digest = (ver.summary or {}).get("report_png_hash") if ver is not None else None
    if not isinstance(digest, str):
        return error_page(request, viewer, 404, f"version {version_id} has no report.png")
    return FileResponse(store.path(digest), media_type="image/png", headers=HEADERS)
