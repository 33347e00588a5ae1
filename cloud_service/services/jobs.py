"""Compression jobs: submit (validated), list, get, cancel. Execution is in ``tasks``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cloud_service.db import utcnow
from cloud_service.errors import ConflictError, InvalidInputError
from cloud_service.models import Dataset, Job, Model

TERMINAL = ("succeeded", "failed", "cancelled")
CONSTRAINT_KEYS = ("max_accuracy_drop", "latency_budget_ms", "size_budget_mb")
#: Base model formats a job compresses: safetensors of a built-in architecture, or ONNX.
COMPRESSIBLE = ("safetensors", "onnx")


def check_profile(name: str) -> None:
    """Only built-in profile names: a path would let a client read server files."""
    from hadmc_core.hal import list_profiles

    names = list_profiles()
    if name not in names:
        raise InvalidInputError(f"unknown profile {name!r}; valid names: {', '.join(names)}")


def build_config(config: dict[str, Any], constraints: dict[str, Any]) -> dict[str, Any]:
    from hadmc_core.config import PipelineConfig
    from hadmc_core.errors import HadmcError

    for key, value in constraints.items():
        if key not in CONSTRAINT_KEYS:
            raise InvalidInputError(f"unknown constraint {key!r}; valid: "
                                    f"{', '.join(CONSTRAINT_KEYS)}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or value < 0):
            raise InvalidInputError(f"constraint {key} must be a non-negative number")
    merged = dict(config)
    merged["constraints"] = {**(config.get("constraints") or {}), **constraints}
    try:
        return PipelineConfig.from_dict(merged).to_dict()
    except HadmcError as e:
        raise InvalidInputError(str(e)) from e
    except (TypeError, ValueError, AttributeError) as e:
        raise InvalidInputError(f"invalid pipeline config: {e}") from e


def create_job(*, session: Session, model_id: int, dataset_id: int, profile: str,
               constraints: dict[str, Any], config: dict[str, Any],
               owner_id: int | None) -> Job | None:
    """A queued job, or None when the model or dataset does not exist."""
    model = session.get(Model, model_id)
    dataset = session.get(Dataset, dataset_id)
    if model is None or dataset is None:
        return None
    if model.format not in COMPRESSIBLE:
        raise InvalidInputError(f"model {model_id} is {model.format}; compression takes "
                                f"{' or '.join(COMPRESSIBLE)} models")
    check_profile(profile)
    job = Job(model_id=model_id, dataset_id=dataset_id, profile=profile,
              config=build_config(config, constraints), state="queued", owner_id=owner_id,
              timings={}, log_tail="", done=0, total=0, attempts=0, cancel_requested=False)
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(*, session: Session, offset: int, limit: int, state: str | None = None,
              model_id: int | None = None) -> tuple[list[Job], int]:
    query = select(Job)
    if state:
        query = query.where(Job.state == state)
    if model_id is not None:
        query = query.where(Job.model_id == model_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.id.desc()).offset(offset).limit(limit))
    return list(rows), count


def cancel_job(*, session: Session, job_id: int) -> Job | None:
    """Queued jobs are cancelled now; running ones at their next progress report."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    if job.state in TERMINAL:
        raise ConflictError(f"job {job_id} is already {job.state}; only queued or running "
                            "jobs can be cancelled")
    now = utcnow()
    done = session.execute(
        update(Job).where(Job.id == job_id, Job.state == "queued")
        .values(state="cancelled", cancel_requested=True, finished_at=now,
                error="cancelled by user"))
    if done.rowcount == 0:  # type: ignore[attr-defined]
        session.execute(update(Job).where(Job.id == job_id, Job.state == "running")
                        .values(cancel_requested=True))
    session.flush()
    session.refresh(job)
    return job


def percent(job: Job) -> float | None:
    return round(100.0 * job.done / job.total, 1) if job.total else None


def stage_seconds(*, session: Session) -> dict[str, tuple[int, float]]:
    """Per pipeline stage, over finished jobs: how many spent time in it and how many
    seconds in all (``jobs.timings``; ``stage -> (count, seconds)``)."""
    totals: dict[str, tuple[int, float]] = {}
    for timings in session.scalars(select(Job.timings).where(Job.state.in_(TERMINAL))):
        for stage, seconds in (timings or {}).items():
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                n, total = totals.get(stage, (0, 0.0))
                totals[stage] = (n + 1, total + float(seconds))
    return totals
