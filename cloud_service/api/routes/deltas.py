"""/v1/versions/{id}/manifest and /delta: signed manifests, cached incremental updates
between versions, and deltas against what a device holds (its own manifest)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from cloud_service import schemas_examples as ex
from cloud_service.api.deps import AnyPrincipal, PathId, SessionDep, StoreDep
from cloud_service.api.downloads import RANGE, CountedFileResponse, octet, serve_artifact
from cloud_service.api.problems import problems
from cloud_service.errors import InvalidInputError, NotFoundError, UnsupportedMediaTypeError
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


HOLDER_BODY = {"requestBody": {
    "required": True,
    "description": "The manifest of the files the device holds (`docs/delta.md`), as the "
                   "server that sent them signed it or bare, at this version's chunk size. "
                   "At most HADMC_MAX_JSON_BODY_KB (413 beyond).",
    "content": {"application/json": {"schema": {"type": "object"},
                                     "example": ex.MANIFEST}}}}


@router.post(
    "/{version_id}/delta", summary="Delta to this version from what a device holds",
    response_class=FileResponse, openapi_extra=HOLDER_BODY,
    responses={200: {"description": "The signed delta container.", "content": {
                   "application/octet-stream": {
                       "schema": {"type": "string", "format": "binary"},
                       "example": "(the bytes of the delta container)"}}},
               **problems(413, 415)},
    description="For a device that holds a version this server does not know (restored "
                "from a backup, moved from another server): a signed delta container "
                "built against the chunks its manifest lists, matched by hash "
                "(`docs/delta.md`); chunks it lacks are sent compressed, and the whole file "
                "only when that is smaller. Answered whole (no Range on a POST: a dropped "
                "download asks again); built for each request and stored "
                "content-addressed, so a repeat is stored once. Users and devices; bytes "
                "sent to a device count for it. 404 unknown id, 413 a manifest over the "
                "JSON body limit, 415 not JSON, 422 a manifest that does not parse, breaks "
                "a cap, whose hashes disagree, or of another chunk size.")
async def holder_delta(version_id: PathId, request: Request, session: SessionDep,
                       who: AnyPrincipal, store: StoreDep) -> CountedFileResponse:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaTypeError(f"send the manifest as JSON with Content-Type: "
                                        f"application/json (got {ctype or 'none'})")
    body = await request.body()  # bounded by the guard (HADMC_MAX_JSON_BODY_KB)
    target = await run_in_threadpool(_get, session, version_id)
    digest, _ = await run_in_threadpool(svc.delta_for_holder, session=session, store=store,
                                        target=target, key=request.app.state.signing_key,
                                        body=body)
    await run_in_threadpool(session.commit)
    return serve_artifact(request, store, digest,
                          f"model-{target.model_id}-held-v{target.number}.delta", who,
                          target.id)
