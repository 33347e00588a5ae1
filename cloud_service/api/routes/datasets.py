"""/v1/datasets: built-in datasets by name, uploaded .npz files, COCO or YOLO folders."""

from __future__ import annotations

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
from cloud_service.schemas import DatasetCreate, DatasetPublic, Name, Page
from cloud_service.services import datasets as svc

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=problems(401, 403, 422))


@router.post("", status_code=201, response_model=DatasetPublic,
             summary="Register a built-in dataset",
             description="Names a built-in dataset (`fashion-mnist` or `digits`, with fixed "
                         "documented splits) so jobs can use it. Operator or admin role. 422 for "
                         "an unknown name or extra fields.")
def create_builtin(body: DatasetCreate, session: SessionDep, user: OperatorUser) -> DatasetPublic:
    row = svc.create_dataset(session=session, name=body.name or body.builtin,
                             builtin=body.builtin, owner_id=user.id)
    session.commit()
    return DatasetPublic.model_validate(row)


@router.post("/upload", status_code=201, response_model=DatasetPublic,
             openapi_extra=uploads.raw_body("an .npz file, or a COCO or YOLO folder as a .zip"),
             summary="Upload a dataset (.npz, or a COCO or YOLO folder as a .zip)",
             responses=problems(413, 415),
             description="`kind=npz` (default): an .npz with arrays `x` (N,H,W or N,C,H,W) and "
                         "`y` (N labels), loaded without pickle and split 80/10/10; 413 when its "
                         "arrays inflate past HADMC_MAX_DATASET_DECOMPRESSED_MB or it holds more "
                         "samples than HADMC_MAX_DATASET_SAMPLES (checked from the headers "
                         "before anything is inflated). `kind=coco` (annotations.json + images/) "
                         "or `kind=yolo` (data.yaml, images/, labels/): a detection folder as a "
                         ".zip, unpacked with zip-slip checks (absolute paths, `..`, symlinks: "
                         "422) and zip-bomb checks (more entries than HADMC_MAX_DATASET_FILES, "
                         "more inflated bytes than HADMC_MAX_DATASET_DECOMPRESSED_MB, a "
                         "compression ratio over 200: 413), then validated; the problem names "
                         "the file. The body is streamed raw (`application/octet-stream`). "
                         "Operator or admin role. 415 for another content type.")
async def upload_dataset(request: Request, session: SessionDep, user: OperatorUser,
                         settings: SettingsDep, store: StoreDep,
                         name: Annotated[Name, Query(min_length=1, max_length=200,
                                                    examples=["line-3 defects"])],
                         kind: Annotated[Literal["npz", "coco", "yolo"],
                                         Query(description="What the upload holds.")] = "npz",
                         ) -> DatasetPublic:
    digest, size = await uploads.receive(request, settings, store)
    if kind == "npz":
        details = await run_in_threadpool(svc.describe_npz, store, digest, settings)
    else:
        details = await run_in_threadpool(svc.describe_archive, store, digest, settings, kind)
    row = svc.create_dataset(session=session, name=name, digest=digest, size=size,
                             details=details, owner_id=user.id)
    session.commit()
    return DatasetPublic.model_validate(row)


@router.get("", response_model=Page[DatasetPublic], summary="List datasets",
            description="Datasets, newest first, a page at a time with the total count. "
                        "Any user role.")
def list_datasets(session: SessionDep, user: ViewerUser,
                  offset: Offset = 0,
                  limit: Limit = 50) -> Page[DatasetPublic]:
    rows, count = svc.list_datasets(session=session, offset=offset, limit=limit)
    return Page[DatasetPublic](data=[DatasetPublic.model_validate(r) for r in rows], count=count)


@router.get("/{dataset_id}", response_model=DatasetPublic, summary="Get a dataset",
            description="One dataset with its details. Any user role. 404 for an unknown id.",
            responses=problems(404))
def get_dataset(dataset_id: PathId, session: SessionDep, user: ViewerUser) -> DatasetPublic:
    row = svc.get_dataset(session=session, dataset_id=dataset_id)
    if row is None:
        raise NotFoundError(f"dataset {dataset_id} does not exist")
    return DatasetPublic.model_validate(row)
