"""/v1/versions/{id}/manifest and /delta: signed manifests and cached incremental updates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from cloud_service import schemas_examples as ex
from cloud_service.api.deps import AnyPrincipal, PathId, SessionDep, StoreDep
from cloud_service.api.downloads import RANGE, CountedFileResponse, octet, serve_artifact
from cloud_service.api.problems import problems
from cloud_service.errors import InvalidInputError, NotFoundError
from cloud_service.models import ModelVersion
from cloud_service.schemas import MAX_ID
from cloud_service.services import deltas as svc
from cloud_service.services.publish import ensure_manifest
from cloud_service.services.versions import get_version

router = APIRouter(prefix="/v1/versions", tags=["versions"],
                   responses=problems(401, 403, 404, 422))


def _get(session: SessionDep, version_id: int) -> ModelVersion:
    row = get_version(session=session, version_id=version_id)
    if row is None:
        raise NotFoundError(f"model version {version_id} does not exist")
    return row


@router.get("/{version_id}/manifest", summary="The version's signed manifest",
            description="Per-tensor chunk hashes (BLAKE3), signed with the server's Ed25519 "
                        "key (public half returned at device registration). Computed once "
                        "and stored: the same bytes every time (signed again only when "
                        "close to expiry). Users and devices. 404 for an unknown id.",
            responses={200: {"description": "The signed manifest (docs/delta.md).",
                             "content": {"application/json": {
                                 "schema": {"type": "object"}, "example": ex.MANIFEST}}}})
def manifest(version_id: PathId, request: Request, session: SessionDep, who: AnyPrincipal,
             store: StoreDep) -> Response:
    body = ensure_manifest(session=session, store=store, version=_get(session, version_id),
                           key=request.app.state.signing_key)
    session.commit()
    return Response(body, media_type="application/json")


@router.get("/{version_id}/delta", summary="Delta from another version to this one",
            response_class=FileResponse,
            description="A signed delta container (see docs/delta.md) that turns the ONNX "
                        "of `from` into this version's; computed once and cached. Supports "
                        "HTTP Range (206); the ETag is the container's BLAKE3. Users and "
                        "devices; bytes sent to a device count for it and its rollout. 404 "
                        "for an unknown id, 422 when `from` is this version.",
            responses=octet("the delta container"), openapi_extra=RANGE)
def delta(version_id: PathId, request: Request, session: SessionDep, who: AnyPrincipal,
          store: StoreDep,
          from_: Annotated[int, Query(alias="from", ge=1, le=MAX_ID,
                                      description="The version the device has.",
                                      examples=[6])]
          ) -> CountedFileResponse:
    target, base = _get(session, version_id), _get(session, from_)
    if base.id == target.id:
        raise InvalidInputError("`from` is this version already; nothing to send")
    row = svc.get_delta(session=session, store=store, base=base, target=target,
                        key=request.app.state.signing_key)
    session.commit()
    return serve_artifact(request, store, row.artifact_hash,
                          f"model-{target.model_id}-v{base.number}-v{target.number}.delta",
                          who, target.id)
