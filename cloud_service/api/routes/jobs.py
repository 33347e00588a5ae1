"""/v1/jobs: compression jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from cloud_service.api.deps import (
    Limit,
    Offset,
    OperatorUser,
    PathId,
    QueryId,
    SessionDep,
    SettingsDep,
    ViewerUser,
)
from cloud_service.api.problems import problems
from cloud_service.errors import InvalidInputError, NotFoundError
from cloud_service.models import Model
from cloud_service.schemas import JobCreate, JobPublic, JobState, Page
from cloud_service.services import jobs as svc
from cloud_service.services import plans
from cloud_service.tasks.dispatch import enqueue_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problems(401, 403, 422))


@router.post("", status_code=202, response_model=JobPublic, summary="Submit a compression job",
             responses=problems(404, 409),
             description="The job is stored, then queued for a worker; poll GET /v1/jobs/{id}. "
                         "The base model is safetensors of a built-in architecture or an ONNX "
                         "file (the dataset's images are fitted to its input). The target is a "
                         "built-in profile, an enrolled device (its measured operator latency "
                         "table and its runtime) or enrolled devices by tag. Operator or "
                         "admin role. 404 when the model, dataset or device does not exist; "
                         "409 for a revoked device or a tag selector without a usable device "
                         "(with each device's reason); 422 for an unknown profile or an "
                         "invalid config. With `update_of` the job keeps that version's plan "
                         "and its version continues that version's model line: 404 when the "
                         "version does not exist, 409 when it is of another model line or "
                         "architecture.")
def submit_job(body: JobCreate, session: SessionDep, user: OperatorUser,
               settings: SettingsDep) -> JobPublic:
    target = body.target.model_dump(exclude_none=True) if body.target is not None else None
    _check_update_of(body, session)
    job = svc.create_job(session=session, model_id=body.model_id, dataset_id=body.dataset_id,
                         profile=body.profile, target=target, constraints=body.constraints,
                         config=body.config, owner_id=user.id, task=body.task)
    if job is None:
        raise NotFoundError(f"model {body.model_id} or dataset {body.dataset_id} does not exist")
    job.update_of_id, job.allow_restructure = body.update_of, body.allow_restructure
    session.commit()  # the row exists before any worker can see the message
    enqueue_job(job.id, settings)
    session.refresh(job)
    return JobPublic.model_validate(job)


@router.get("", response_model=Page[JobPublic], summary="List jobs",
            description="Jobs, newest first, optionally only one state or one base model. "
                        "Any user role.")
def list_jobs(session: SessionDep, user: ViewerUser,
              state: Annotated[JobState | None, Query(examples=["running"])] = None,
              model_id: QueryId = None,
              offset: Offset = 0,
              limit: Limit = 50) -> Page[JobPublic]:
    rows, count = svc.list_jobs(session=session, offset=offset, limit=limit, state=state,
                                model_id=model_id)
    return Page[JobPublic](data=[JobPublic.model_validate(r) for r in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic, summary="Get a job's state and progress",
            description="State, stage, percent, per-stage timings, log tail, error and the "
                        "version it produced. Any user role. 404 for an unknown id.",
            responses=problems(404))
def get_job(job_id: PathId, session: SessionDep, user: ViewerUser) -> JobPublic:
    job = svc.get_job(session=session, job_id=job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return JobPublic.model_validate(job)


@router.post("/{job_id}/cancel", response_model=JobPublic, summary="Cancel a job",
             responses=problems(404, 409),
             description="Asks the worker to stop at its next progress report (a queued job is "
                         "cancelled at once). Operator or admin role. 404 for an unknown id, 409 "
                         "if the job already finished.")
def cancel_job(job_id: PathId, session: SessionDep, user: OperatorUser) -> JobPublic:
    job = svc.cancel_job(session=session, job_id=job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist")
    session.commit()
    return JobPublic.model_validate(job)


def _check_update_of(body: JobCreate, session: SessionDep) -> None:
    if body.update_of is None:
        if body.allow_restructure:
            raise InvalidInputError("allow_restructure needs update_of")
        return
    model = session.get(Model, body.model_id)
    if model is not None and plans.check_update_of(session=session, model=model,
                                                   version_id=body.update_of) is None:
        raise NotFoundError(f"version {body.update_of} does not exist")
