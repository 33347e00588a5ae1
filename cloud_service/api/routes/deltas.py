"""/v1/versions/{id}/manifest and /delta: signed manifests and incremental updates."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from cloud_service.api.deps import AnyPrincipal, PathId, SessionDep, StoreDep
from cloud_service.errors import InvalidInputError, NotFoundError
from cloud_service.models import ModelVersion
from cloud_service.schemas import MAX_ID
from cloud_service.services import deltas as svc
from cloud_service.services.versions import get_version

router = APIRouter(prefix="/v1/versions", tags=["versions"])
OCTET: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}}}


def _get(session: SessionDep, version_id: int) -> ModelVersion:
    row = get_version(session=session, version_id=version_id)
    if row is None:
        raise NotFoundError(f"model version {version_id} does not exist")
    return row


@router.get("/{version_id}/manifest", summary="The version's signed manifest",
            description="Per-tensor chunk hashes (BLAKE3), signed with the server's Ed25519 "
                        "key (public half returned at device registration).",
            responses={200: {"content": {"application/json": {}}}})
def manifest(version_id: PathId, request: Request, session: SessionDep, who: AnyPrincipal,
             store: StoreDep) -> Response:
    body = svc.signed_manifest(store=store, version=_get(session, version_id),
                               key=request.app.state.signing_key)
    return Response(body, media_type="application/json")


@router.get("/{version_id}/delta", summary="Delta from another version to this one",
            description="A signed delta container (see docs/delta.md) that turns the ONNX "
                        "of `from` into this version's.", responses=OCTET)
def delta(version_id: PathId, request: Request, session: SessionDep, who: AnyPrincipal,
          store: StoreDep,
          from_: Annotated[int, Query(alias="from", ge=1, le=MAX_ID,
                                      description="The version the device has.")]) -> Response:
    target, base = _get(session, version_id), _get(session, from_)
    if base.id == target.id:
        raise InvalidInputError("`from` is this version already; nothing to send")
    blob, stats = svc.make_delta(store=store, base=base, target=target,
                                 key=request.app.state.signing_key)
    return Response(blob, media_type="application/octet-stream", headers={
        "X-HADMC-Target-Bytes": str(stats["target_bytes"]),
        "X-HADMC-Full-Zstd-Bytes": str(stats["full_zstd_bytes"])})
