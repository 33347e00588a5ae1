"""/v1/models: base models (safetensors + architecture, or ONNX)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from cloud_service.api import uploads
from cloud_service.api.deps import (
    Limit,
    Offset,
    OperatorUser,
    PathId,
    SessionDep,
    SettingsDep,
    StoreDep,
    ViewerUser,
)
from cloud_service.api.problems import problems
from cloud_service.errors import NotFoundError
from cloud_service.schemas import ModelPublic, Name, Page, VersionPublic
from cloud_service.services import models as svc
from cloud_service.services import publish
from cloud_service.services.jobs import check_profile
from cloud_service.services.versions import create_version
from cloud_service.storage import ArtifactStore

router = APIRouter(prefix="/v1/models", tags=["models"], responses=problems(401, 403, 422))


@router.post("", status_code=201, response_model=ModelPublic,
             openapi_extra=uploads.raw_body("safetensors or ONNX"),
             summary="Upload a base model", responses=problems(413, 415),
             description="Stream safetensors weights (with `arch`, or architecture metadata in the "
                         "file) or an ONNX file as the raw body (`application/octet-stream`). "
                         "Files are validated (never unpickled) and stored by BLAKE3 hash. "
                         "Operator or admin role. 413 over the upload limit, 415 for another "
                         "content type, 422 for a file that does not parse or does not match the "
                         "architecture.")
async def upload_model(
    request: Request, session: SessionDep, user: OperatorUser, settings: SettingsDep,
    store: StoreDep,
    name: Annotated[Name, Query(min_length=1, max_length=200, examples=["resnet18-fashion"])],
    format: Annotated[Literal["safetensors", "onnx"], Query(examples=["safetensors"])
                      ] = "safetensors",
    arch: Annotated[str | None, Query(description="Zoo architecture name.",
                                      examples=["resnet18"])] = None,
    in_channels: Annotated[int, Query(ge=1, le=64, examples=[1])] = 1,
    num_classes: Annotated[int, Query(ge=2, le=100000, examples=[10])] = 10,
    stem: Annotated[Literal["small", "imagenet"], Query(examples=["small"])] = "small",
    width: Annotated[float, Query(gt=0, le=8, examples=[1.0])] = 1.0,
) -> ModelPublic:
    digest, size = await uploads.receive(request, settings, store)
    spec = ({"arch": arch, "in_channels": in_channels, "num_classes": num_classes,
             "stem": stem, "width": width} if arch else None)
    arch_dict, details = await run_in_threadpool(svc.validate_upload, store.path(digest),
                                                 fmt=format, arch=spec)
    row = svc.create_model(session=session, name=name, fmt=format, arch=arch_dict,
                           digest=digest, size=size, details=details, owner_id=user.id)
    session.commit()
    return ModelPublic.model_validate(row)


@router.get("", response_model=Page[ModelPublic], summary="List base models",
            description="Base models, newest first, a page at a time with the total count. "
                        "Any user role.")
def list_models(session: SessionDep, user: ViewerUser,
                offset: Offset = 0,
                limit: Limit = 50) -> Page[ModelPublic]:
    rows, count = svc.list_models(session=session, offset=offset, limit=limit)
    return Page[ModelPublic](data=[ModelPublic.model_validate(r) for r in rows], count=count)


@router.get("/{model_id}", response_model=ModelPublic, summary="Get a base model",
            description="One base model with its architecture and details. Any user role. 404 "
                        "for an unknown id.", responses=problems(404))
def get_model(model_id: PathId, session: SessionDep, user: ViewerUser) -> ModelPublic:
    row = svc.get_model(session=session, model_id=model_id)
    if row is None:
        raise NotFoundError(f"model {model_id} does not exist")
    return ModelPublic.model_validate(row)


def _publish(session: SessionDep, store: ArtifactStore, request: Request, model_id: int,
             profile: str, digest: str, size: int) -> VersionPublic:
    if svc.get_model(session=session, model_id=model_id) is None:
        raise NotFoundError(f"model {model_id} does not exist")
    check_profile(profile)
    details = svc.inspect_onnx(store.path(digest))
    report_hash, _ = store.put_bytes(json.dumps(
        {"source": "upload", "onnx": details}, sort_keys=True).encode())
    row = create_version(session=session, model_id=model_id, profile=profile,
                         onnx_hash=digest, onnx_size=size, report_hash=report_hash,
                         summary={"source": "upload", "task": details["task"]})
    publish.publish(session=session, store=store, version=row,
                    key=request.app.state.signing_key)
    session.commit()
    return VersionPublic.model_validate(row)


@router.post("/{model_id}/versions", status_code=201, response_model=VersionPublic,
             openapi_extra=uploads.raw_body("ONNX"),
             summary="Publish a ready ONNX model as a version",
             responses=problems(404, 413, 415),
             description="The raw ONNX body becomes the model's next numbered version (no "
                         "compression job); its signed manifest and probe are computed now. "
                         "Operator or admin role. 404 for an unknown model, 413/415 as for "
                         "uploads, 422 for an unknown profile or a file that is not valid ONNX.")
async def publish_version(model_id: PathId, request: Request, session: SessionDep,
                          user: OperatorUser, settings: SettingsDep, store: StoreDep,
                          profile: Annotated[Name, Query(min_length=1, max_length=100,
                                                        description="Hardware profile name.",
                                                        examples=["x86-avx2"])]
                          ) -> VersionPublic:
    digest, size = await uploads.receive(request, settings, store)
    return await run_in_threadpool(_publish, session, store, request, model_id, profile,
                                   digest, size)
