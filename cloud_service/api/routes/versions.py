"""/v1/versions: immutable compressed model versions and their files."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from cloud_service import schemas_examples as ex
from cloud_service.api import uploads
from cloud_service.api.deps import (
    AnyPrincipal,
    Limit,
    Offset,
    OperatorUser,
    PathId,
    QueryId,
    SessionDep,
    SettingsDep,
    StoreDep,
    ViewerUser,
)
from cloud_service.api.downloads import RANGE, CountedFileResponse, octet, serve_artifact
from cloud_service.api.problems import problems
from cloud_service.errors import NotFoundError, ServiceError
from cloud_service.models import ModelVersion
from cloud_service.schemas import Page, VersionLatency, VersionPublic
from cloud_service.services import publish, updates
from cloud_service.services import versions as svc

router = APIRouter(prefix="/v1/versions", tags=["versions"],
                   responses=problems(401, 403, 404, 422))


def _get(session: SessionDep, version_id: int) -> ModelVersion:
    row = svc.get_version(session=session, version_id=version_id)
    if row is None:
        raise NotFoundError(f"model version {version_id} does not exist")
    return row


@router.get("", response_model=Page[VersionPublic], summary="List model versions",
            description="Versions, newest first, optionally of one base model. Any user role.")
def list_versions(session: SessionDep, user: ViewerUser,
                  model_id: QueryId = None,
                  offset: Offset = 0,
                  limit: Limit = 50) -> Page[VersionPublic]:
    rows, count = svc.list_versions(session=session, offset=offset, limit=limit,
                                    model_id=model_id)
    return Page[VersionPublic](data=[VersionPublic.model_validate(r) for r in rows], count=count)


@router.get("/{version_id}", response_model=VersionPublic, summary="Get a version's metadata",
            description="Hashes, size, summary, whether the constraints were met, and "
                        "`latency`: the report's predicted latency with its source beside "
                        "the median p50/p95 that devices measured, their count and the "
                        "error in percent. Users and enrolled devices may read versions. "
                        "404 for an unknown id.")
def get_version(version_id: PathId, session: SessionDep, who: AnyPrincipal,
                store: StoreDep) -> VersionPublic:
    row = _get(session, version_id)
    try:
        report = svc.read_report(store=store, version=row)
    except (ServiceError, OSError):  # no readable report: no prediction; the rest answers
        report = {}
    latency = updates.version_latency(session=session, version_id=row.id, report=report)
    return VersionPublic.model_validate(row).model_copy(
        update={"latency": VersionLatency.model_validate(latency)})


@router.get("/{version_id}/report", summary="The compression report (report.json)",
            description="The report the compression job wrote (docs/report.md): baseline and "
                        "compressed metrics, constraints, candidates, per-layer decisions, "
                        "timings. A published upload has a short one. Any user role. 404 for an "
                        "unknown id.",
            responses={200: {"description": "The report (JSON object).", "content": {
                "application/json": {"schema": {"type": "object"},
                                     "example": ex.REPORT}}}})
def get_report(version_id: PathId, session: SessionDep, user: ViewerUser,
               store: StoreDep) -> dict[str, Any]:
    return svc.read_report(store=store, version=_get(session, version_id))


@router.get("/{version_id}/model.onnx", response_class=FileResponse,
            summary="Download the ONNX file",
            description="The version's ONNX file. Supports HTTP Range requests (206); the "
                        "ETag is the file's BLAKE3 hash. Users and devices; bytes sent to a "
                        "device count for it and its rollout. 404 for an unknown id.",
            responses=octet("the ONNX model"), openapi_extra=RANGE)
def download_onnx(version_id: PathId, request: Request, session: SessionDep,
                  who: AnyPrincipal, store: StoreDep) -> CountedFileResponse:
    row = _get(session, version_id)
    return serve_artifact(request, store, row.onnx_hash,
                          f"model-{row.model_id}-v{row.number}.onnx", who, row.id)


@router.get("/{version_id}/probe", response_class=FileResponse,
            responses={**octet("the .npz probe"), **problems(409)}, openapi_extra=RANGE,
            summary="The version's probe (.npz)",
            description="Arrays `inputs` (float32, batch first), `outputs` (expected), "
                        "`atol`, `rtol`; stored without pickles. Computed with ONNX Runtime "
                        "on first request when the version has none. Users and devices. 404 "
                        "for an unknown id, 409 when the server cannot make one (several or "
                        "non-float inputs; upload one with PUT).")
def get_probe(version_id: PathId, session: SessionDep, who: AnyPrincipal,
              store: StoreDep) -> CountedFileResponse:
    row = _get(session, version_id)
    digest = publish.ensure_probe(session=session, store=store, version=row)
    session.commit()
    return CountedFileResponse(store.path(digest), media_type="application/octet-stream",
                               filename=f"model-{row.model_id}-v{row.number}.probe.npz",
                               headers={"ETag": f'"{digest}"'})


@router.put("/{version_id}/probe", response_model=VersionPublic,
            openapi_extra=uploads.raw_body("an .npz probe"),
            summary="Replace the version's probe (user)", responses=problems(409, 413, 415),
            description="A raw `.npz` body (`application/octet-stream`) with `inputs`, `outputs`, "
                        "`atol`, `rtol` (no pickles). Operator or admin role. 409 once the version "
                        "is in any rollout, 413/415 as for uploads, 422 for an invalid probe.")
async def put_probe(version_id: PathId, request: Request, session: SessionDep,
                    user: OperatorUser, settings: SettingsDep, store: StoreDep) -> VersionPublic:
    row = await run_in_threadpool(_get, session, version_id)
    digest, _ = await uploads.receive(request, settings, store)
    await run_in_threadpool(publish.validate_probe, store.path(digest))
    row = await run_in_threadpool(svc.set_probe, session=session, version=row, digest=digest)
    session.commit()
    return VersionPublic.model_validate(row)
