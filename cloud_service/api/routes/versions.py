"""/v1/versions: immutable compressed model versions and their files."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from cloud_service.api import uploads
from cloud_service.api.deps import (
    AnyPrincipal,
    CurrentUser,
    Offset,
    PathId,
    QueryId,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from cloud_service.api.downloads import OCTET, CountedFileResponse, serve_artifact
from cloud_service.errors import NotFoundError
from cloud_service.models import ModelVersion
from cloud_service.schemas import Page, VersionPublic
from cloud_service.services import publish
from cloud_service.services import versions as svc

router = APIRouter(prefix="/v1/versions", tags=["versions"])


def _get(session: SessionDep, version_id: int) -> ModelVersion:
    row = svc.get_version(session=session, version_id=version_id)
    if row is None:
        raise NotFoundError(f"model version {version_id} does not exist")
    return row


@router.get("", response_model=Page[VersionPublic], summary="List model versions")
def list_versions(session: SessionDep, user: CurrentUser,
                  model_id: QueryId = None,
                  offset: Offset = 0,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50) -> Page[VersionPublic]:
    rows, count = svc.list_versions(session=session, offset=offset, limit=limit,
                                    model_id=model_id)
    return Page[VersionPublic](data=[VersionPublic.model_validate(r) for r in rows], count=count)


@router.get("/{version_id}", response_model=VersionPublic, summary="Get a version's metadata",
            description="Users and enrolled devices may read versions.")
def get_version(version_id: PathId, session: SessionDep, who: AnyPrincipal) -> VersionPublic:
    return VersionPublic.model_validate(_get(session, version_id))


@router.get("/{version_id}/report", summary="The compression report (report.json)")
def get_report(version_id: PathId, session: SessionDep, user: CurrentUser,
               store: StoreDep) -> dict[str, Any]:
    row = _get(session, version_id)
    return json.loads(store.path(row.report_hash).read_bytes())


@router.get("/{version_id}/model.onnx", response_class=FileResponse,
            summary="Download the ONNX file",
            description="Supports HTTP Range requests; the ETag is the file's BLAKE3 hash.",
            responses=OCTET)
def download_onnx(version_id: PathId, request: Request, session: SessionDep,
                  who: AnyPrincipal, store: StoreDep) -> CountedFileResponse:
    row = _get(session, version_id)
    return serve_artifact(request, store, row.onnx_hash,
                          f"model-{row.model_id}-v{row.number}.onnx", who, row.id)


@router.get("/{version_id}/probe", response_class=FileResponse, responses=OCTET,
            summary="The version's probe (.npz)",
            description="Arrays `inputs` (float32, batch first), `outputs` (expected), "
                        "`atol`, `rtol`; stored without pickles. Computed with ONNX Runtime "
                        "on first request when the version has none.")
def get_probe(version_id: PathId, session: SessionDep, who: AnyPrincipal,
              store: StoreDep) -> FileResponse:
    row = _get(session, version_id)
    digest = publish.ensure_probe(session=session, store=store, version=row)
    session.commit()
    return FileResponse(store.path(digest), media_type="application/octet-stream",
                        filename=f"model-{row.model_id}-v{row.number}.probe.npz",
                        headers={"ETag": f'"{digest}"'})


@router.put("/{version_id}/probe", response_model=VersionPublic,
            openapi_extra=uploads.RAW_BODY, summary="Replace the version's probe (user)",
            description="A raw `.npz` body with `inputs`, `outputs`, `atol`, `rtol` (no "
                        "pickles). 409 once the version is in any rollout.")
async def put_probe(version_id: PathId, request: Request, session: SessionDep,
                    user: CurrentUser, settings: SettingsDep, store: StoreDep) -> VersionPublic:
    row = await run_in_threadpool(_get, session, version_id)
    digest, _ = await uploads.receive(request, settings, store)
    await run_in_threadpool(publish.validate_probe, store.path(digest))
    row = await run_in_threadpool(svc.set_probe, session=session, version=row, digest=digest)
    session.commit()
    return VersionPublic.model_validate(row)
