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


def latency_comparison(report: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    """Predicted latency (the report's measurement of the compressed model on the target
    profile, and the latency model's estimate of the chosen candidate) beside the median
    p50 that devices measured."""
    chosen = next((c for c in report.get("candidates") or []
                   if isinstance(c, dict) and c.get("chosen")), {})
    predicted = (report.get("compressed") or {}).get("latency_ms")
    median = measured["median_ms"]
    ratio = median / predicted if median is not None and predicted else None
    return {"predicted_ms": predicted, "estimated_ms": chosen.get("estimated_ms"),
            "source": report.get("latency_model"), "measured_ms": median,
            "devices": measured["devices"], "ratio": ratio,
            "per_device": sorted(measured["per_device"].items())}


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
    measured = updates_svc.measured_p50(session=session, version_id=version_id)
    return render(request, "version.html", viewer, title=f"Version {ver.id}",
                  nav="versions", ver=ver, model=model_names(session).get(ver.model_id, "?"),
                  report=report, report_error=report_error, plot=scatter(report),
                  layers=[r for r in report.get("layers") or [] if isinstance(r, dict)],
                  latency=latency_comparison(report, measured),
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
