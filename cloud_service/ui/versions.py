"""/ui/versions: compressed versions, each with its report, accuracy/latency plot,
per-layer decisions, what it was built for and the job's target, and predicted against
measured latency."""

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


#: How the page names the latency models a report may name (``latency_model``).
LATENCY_MODELS = {
    "device-table+whole-model-term": "device's operator table through its whole-model term",
    "device-table": "device's operator table, sum of the layers (no whole-model term)",
    "device-table+whole-model-term+p50-correction": "device's operator table through its "
    "whole-model term, corrected by the p50s it reported",
    "device-table+p50-correction": "device's operator table, sum of the layers, corrected "
    "by the p50s it reported",
    "roofline": "roofline of the profile",
}


def latency_model_label(name: str | None) -> str | None:
    if not name:
        return None
    if name.startswith("measured-"):
        backend = name.removeprefix("measured-").removesuffix("-in-graph")
        fitted = " in graph context" if name.endswith("-in-graph") else ""
        return f"layers timed on the worker by {backend}{fitted}"
    return LATENCY_MODELS.get(name, name)


def built_for_view(built: dict[str, Any] | None) -> dict[str, Any] | None:
    """A version's ``built_for`` as the page shows it: hardware class, the runtime it was
    built and checked with, the runtimes it may run on, that runtime's version range and
    the memory it needs; None when not recorded (matched by its profile alone)."""
    if not built:
        return None
    rng = built.get("runtime_version") or {}
    versions = None
    if rng.get("min") or rng.get("below"):
        versions = " ".join(p for p in (f">= {rng['min']}" if rng.get("min") else "",
                                        f"< {rng['below']}" if rng.get("below") else "") if p)
    flags = [str(f) for f in built.get("flags") or []]
    hardware = " ".join(str(built[k]) for k in ("isa", "accelerator") if built.get(k))
    return {"hardware": hardware or None, "flags": flags, "runtime": built.get("runtime"),
            "runtimes": [str(r) for r in built.get("runtimes") or []],
            "versions": versions, "memory_mb": built.get("memory_mb")}


def target_view(target: dict[str, Any] | None, profile: str) -> dict[str, Any]:
    """The job's target (the report's ``target`` section, kept in the version's summary)
    as the page shows it: what it was, its devices, tags, runtime and latency basis."""
    t = target if isinstance(target, dict) else {}
    kind = t.get("kind") or "profile"
    ids = [int(i) for i in t.get("device_ids") or [] if isinstance(i, int)]
    tags = [str(x) for x in t.get("tags") or []]
    if kind == "device" and ids:
        label = f"device {ids[0]}"
    elif kind == "devices":
        label = f"devices tagged {', '.join(tags)}" if tags else "devices"
    else:
        label = f"profile {t.get('profile') or profile}"
    basis = None
    if t.get("latency") == "device_table":
        basis = ("operator table + whole-model term" if t.get("whole_model") not in
                 (None, "layer sum") else "operator table, layer sum")
    elif t.get("latency") == "profile":
        basis = "the device's reported profile"
    return {"kind": kind, "label": label, "device_ids": ids, "tags": tags,
            "runtime": t.get("runtime"), "basis": basis,
            "notes": [str(n) for n in t.get("notes") or []]}


@router.get("", response_class=HTMLResponse)
def version_list(request: Request, session: SessionDep, viewer: ViewerDep,
                 offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    rows, count = svc.list_versions(session=session, offset=offset, limit=PAGE)
    return render(request, "versions.html", viewer, title="Versions", nav="versions",
                  versions=rows, count=count, offset=offset, page=PAGE,
                  models=model_names(session),
                  builds={v.id: built_for_view(v.built_for) for v in rows},
                  targets={v.id: target_view((v.summary or {}).get("target"), v.profile)
                           for v in rows})


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
                  built=built_for_view(ver.built_for),
                  target=target_view(report.get("target")
                                     or (ver.summary or {}).get("target"), ver.profile),
                  latency_model=latency_model_label(report.get("latency_model")),
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
