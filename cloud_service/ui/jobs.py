"""/ui/jobs: compression jobs with live progress; submit and cancel."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from cloud_service.api.deps import PathId, SessionDep, SettingsDep
from cloud_service.errors import ServiceError
from cloud_service.models import Job
from cloud_service.schemas import JobCreate, JobPublic
from cloud_service.services import datasets as datasets_svc
from cloud_service.services import jobs as svc
from cloud_service.services import models as models_svc
from cloud_service.tasks.dispatch import enqueue_job
from cloud_service.ui.lookups import dataset_names, model_names
from cloud_service.ui.render import HEADERS, error_page, render
from cloud_service.ui.rollouts import validation_message
from cloud_service.ui.session import OperatorDep, OperatorFormDep, ViewerDep

router = APIRouter(prefix="/ui/jobs", include_in_schema=False)
PAGE = 50
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TECHNIQUES = ("prune", "distill", "quantize")
DEFAULT_MAX_DROP = 1.0


class FormError(ValueError):
    pass


def _number(form: dict[str, str], name: str) -> float | None:
    text = form.get(name, "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise FormError(f"{name.replace('_', ' ')}: {text!r} is not a number") from None


def body_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The body of ``POST /v1/jobs`` from the form: techniques left unticked are disabled;
    the optional JSON overrides are merged over that (``PipelineConfig.from_dict``)."""
    config: dict[str, Any] = {t: {"enabled": False} for t in TECHNIQUES
                              if form.get(t) != "on"}
    overrides = form.get("config", "").strip()
    if overrides:
        try:
            extra = json.loads(overrides)
        except ValueError as e:
            raise FormError(f"config overrides: not JSON ({e})") from None
        if not isinstance(extra, dict):
            raise FormError("config overrides: give a JSON object, e.g. "
                            '{"measure": {"runs": 20}}')
        for key, value in extra.items():
            config[key] = {**config.get(key, {}), **value} \
                if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    constraints = {k: v for k in svc.CONSTRAINT_KEYS
                   if (v := _number(form, k)) is not None}
    return {"model_id": form.get("model_id"), "dataset_id": form.get("dataset_id"),
            "profile": form.get("profile", ""), "constraints": constraints, "config": config}


def _new_form(request: Request, session: SessionDep, viewer: OperatorDep,
              form: dict[str, str], status: int = 200, error: str | None = None
              ) -> HTMLResponse:
    from hadmc_core.hal import list_profiles

    models, _ = models_svc.list_models(session=session, offset=0, limit=500)
    datasets, _ = datasets_svc.list_datasets(session=session, offset=0, limit=500)
    return render(request, "job_new.html", viewer, status=status, title="New job", nav="jobs",
                  models=[m for m in models if m.format in svc.COMPRESSIBLE], datasets=datasets,
                  profiles=list_profiles(), form=form, techniques=TECHNIQUES, error=error)


def _page(request: Request, session: SessionDep, viewer: ViewerDep, job: Job,
          status: int = 200, error: str | None = None) -> HTMLResponse:
    model = models_svc.get_model(session=session, model_id=job.model_id)
    dataset = datasets_svc.get_dataset(session=session, dataset_id=job.dataset_id)
    return render(request, "job.html", viewer, status=status, title=f"Job {job.id}",
                  nav="jobs", job=job, percent=svc.percent(job),
                  finished=job.state in svc.TERMINAL, error=error,
                  model=model.name if model else None, dataset=dataset.name if dataset else None)


@router.get("", response_class=HTMLResponse)
def job_list(request: Request, session: SessionDep, viewer: ViewerDep,
             state: Annotated[str | None, Query(max_length=20)] = None,
             offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    state = state if state in STATES else None
    rows, count = svc.list_jobs(session=session, offset=offset, limit=PAGE, state=state)
    return render(request, "jobs.html", viewer, title="Jobs", nav="jobs", jobs=rows,
                  count=count, offset=offset, page=PAGE, state=state, states=STATES,
                  percent=svc.percent, models=model_names(session),
                  datasets=dataset_names(session))


@router.get("/new", response_class=HTMLResponse)
def new_job(request: Request, session: SessionDep, viewer: OperatorDep) -> HTMLResponse:
    return _new_form(request, session, viewer,
                     {"max_accuracy_drop": str(DEFAULT_MAX_DROP),
                      **{t: "on" for t in TECHNIQUES}})


@router.post("")
def submit_job(request: Request, session: SessionDep, settings: SettingsDep,
               viewer: OperatorDep, form: OperatorFormDep) -> Response:
    try:
        body = JobCreate.model_validate(body_from_form(form))
        job = svc.create_job(session=session, model_id=body.model_id,
                             dataset_id=body.dataset_id, profile=body.profile,
                             constraints=body.constraints, config=body.config,
                             owner_id=viewer.principal.id)
        if job is None:
            raise FormError(f"model {body.model_id} or dataset {body.dataset_id} does not "
                            "exist")
    except ValidationError as e:
        session.rollback()
        return _new_form(request, session, viewer, form, 422, validation_message(e))
    except (FormError, ServiceError) as e:
        session.rollback()
        return _new_form(request, session, viewer, form,
                         getattr(e, "status", 422), str(e))
    session.commit()  # the row exists before any worker can see the message
    enqueue_job(job.id, settings)
    return RedirectResponse(f"/ui/jobs/{job.id}", status_code=303)


@router.get("/{job_id}", response_class=HTMLResponse)
def job_page(job_id: PathId, request: Request, session: SessionDep,
             viewer: ViewerDep) -> HTMLResponse:
    job = svc.get_job(session=session, job_id=job_id)
    if job is None:
        return error_page(request, viewer, 404, f"job {job_id} does not exist")
    return _page(request, session, viewer, job)


@router.get("/{job_id}/progress")
def job_progress(job_id: PathId, request: Request, session: SessionDep,
                 viewer: ViewerDep) -> Response:
    """What the job page's script polls: the job as ``GET /v1/jobs/{id}`` answers it."""
    job = svc.get_job(session=session, job_id=job_id)
    if job is None:
        return error_page(request, viewer, 404, f"job {job_id} does not exist")
    return JSONResponse(JobPublic.model_validate(job).model_dump(mode="json"),
                        headers=HEADERS)


@router.post("/{job_id}/cancel")
def cancel_job(job_id: PathId, request: Request, session: SessionDep, viewer: OperatorDep,
               form: OperatorFormDep) -> Response:
    try:
        job = svc.cancel_job(session=session, job_id=job_id)
    except ServiceError as e:
        session.rollback()
        current = svc.get_job(session=session, job_id=job_id)
        if current is None:
            return error_page(request, viewer, e.status, str(e))
        return _page(request, session, viewer, current, e.status, str(e))
    if job is None:
        return error_page(request, viewer, 404, f"job {job_id} does not exist")
    session.commit()
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
