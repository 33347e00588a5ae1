"""Compression jobs: submit (validated), list, get, cancel. Execution is in ``tasks``.

A job targets a built-in profile, one enrolled device, or enrolled devices by tag
(``resolve_target``). Devices are checked at submission (unknown: 404; revoked: 409; a
tag selector that leaves no usable device: 409 with each device's reason) and their ids
stored in ``jobs.target``; the worker reads their latest profiles and operator latency
tables (``cloud_service.tasks.targets``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cloud_service.db import utcnow
from cloud_service.errors import ConflictError, InvalidInputError, NotFoundError
from cloud_service.models import Dataset, Device, Job, Model

TERMINAL = ("succeeded", "failed", "cancelled")
CONSTRAINT_KEYS = ("max_accuracy_drop", "max_map_drop", "latency_budget_ms", "size_budget_mb",
                   "time_budget_s")
#: Base model formats a job compresses: safetensors of a built-in architecture, or ONNX.
COMPRESSIBLE = ("safetensors", "onnx")


def check_profile(name: str) -> None:
    """Only built-in profile names: a path would let a client read server files."""
    from hadmc_core.hal import list_profiles

    names = list_profiles()
    if name not in names:
        raise InvalidInputError(f"unknown profile {name!r}; valid names: {', '.join(names)}")


def model_task(model: Model) -> str:
    """``detect`` for the zoo's detectors and ONNX files whose metadata says so."""
    if model.format == "onnx":
        return str((model.details or {}).get("task") or "classify")
    return "detect" if str((model.arch or {}).get("arch", "")).startswith("yolo") else "classify"


def check_task(model: Model, dataset: Dataset, task: str | None) -> str:
    """The job's task: as asked, else the dataset's; InvalidInputError when the model, the
    dataset and the task do not agree."""
    from cloud_service.services.datasets import dataset_task

    what = {"classify": "a classification", "detect": "a detection"}
    m, d = model_task(model), dataset_task(dataset)
    if m != d:
        kind = (dataset.details or {}).get("kind") or dataset.builtin or "npz"
        raise InvalidInputError(f"model {model.id} is {what[m]} model but dataset {dataset.id} "
                                f"is {what[d]} dataset ({kind}); a job needs a model and a "
                                "dataset of the same task")
    if task is not None and task != m:
        raise InvalidInputError(f"task {task!r} does not fit model {model.id} and dataset "
                                f"{dataset.id}, which are {what[m]} pair (task {m!r})")
    return m


def task_constraints(task: str, constraints: dict[str, Any]) -> dict[str, Any]:
    """A detect job's drop is ``max_map_drop`` (points of mAP@0.5); ``max_accuracy_drop``
    is the drop in the task's metric, so a detect job takes it too (the dashboard's form
    sends it), but not both. A classify job refuses ``max_map_drop``. Stored as the
    pipeline's ``max_accuracy_drop``."""
    if "max_map_drop" in constraints and task == "classify":
        raise InvalidInputError("constraint max_map_drop is for detect jobs; a classify job "
                                "takes max_accuracy_drop")
    if "max_map_drop" in constraints and "max_accuracy_drop" in constraints:
        raise InvalidInputError("give max_map_drop or max_accuracy_drop, not both (for a "
                                "detect job both are points of mAP@0.5)")
    out = dict(constraints)
    if "max_map_drop" in out:
        out["max_accuracy_drop"] = out.pop("max_map_drop")
    return out


def build_config(config: dict[str, Any], constraints: dict[str, Any],
                 task: str = "classify") -> dict[str, Any]:
    from hadmc_core.config import PipelineConfig
    from hadmc_core.errors import HadmcError

    for key, value in constraints.items():
        if key not in CONSTRAINT_KEYS:
            raise InvalidInputError(f"unknown constraint {key!r}; valid: "
                                    f"{', '.join(CONSTRAINT_KEYS)}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or value < 0):
            raise InvalidInputError(f"constraint {key} must be a non-negative number")
    constraints = task_constraints(task, constraints)
    merged = dict(config)
    merged["constraints"] = {**(config.get("constraints") or {}), **constraints}
    try:
        return PipelineConfig.from_dict(merged).to_dict()
    except HadmcError as e:
        raise InvalidInputError(str(e)) from e
    except (TypeError, ValueError, AttributeError) as e:
        raise InvalidInputError(f"invalid pipeline config: {e}") from e


def _usable(dev: Device) -> str | None:
    """Why a device cannot be a job's target (None: it can)."""
    if dev.revoked_at is not None:
        return f"device {dev.id} is revoked"
    if not dev.profile:
        return (f"device {dev.id} has not reported its hardware profile yet (start its agent, "
                "or target a profile)")
    return None


def common_runtime(devices: list[Device]) -> str | None:
    """The first runtime of the first device (``openvino-cpu``, version left out) that
    every device has; None when they share none."""
    from cloud_service.services.compat import split_runtime

    def names(d: Device) -> list[str]:
        return [split_runtime(str(r))[0] for r in (d.profile or {}).get("runtimes") or []]

    return next((r for r in names(devices[0]) if all(r in names(d) for d in devices[1:])),
                None)


def resolve_target(*, session: Session, profile: str | None, target: dict[str, Any] | None
                   ) -> tuple[str, dict[str, Any]]:
    """(the job's profile label, its target as stored). ``profile`` is the older form of
    ``target={"profile": ...}``. NotFoundError for an unknown device, ConflictError for a
    revoked one or a selector without a usable device."""
    if (profile is None) == (target is None):
        raise InvalidInputError("give the job a `target` (or the older `profile`), not both")
    target = target if target is not None else {"profile": profile}
    if target.get("profile") is not None:
        check_profile(target["profile"])
        return target["profile"], {"profile": target["profile"]}
    if target.get("device") is not None:
        dev = session.get(Device, target["device"])
        if dev is None:
            raise NotFoundError(f"device {target['device']} does not exist")
        why = _usable(dev)
        if why is not None:
            raise ConflictError(why)
        devices, tags = [dev], None
    else:
        tags = list(target["devices"]["tags"])
        found = [d for d in session.scalars(select(Device).order_by(Device.id))
                 if set(tags) & set(d.tags or [])]
        reasons = {d.id: _usable(d) for d in found}
        devices = [d for d in found if reasons[d.id] is None]
        if not devices:
            why = "; ".join(r for r in reasons.values() if r) or "no device has them"
            raise ConflictError(f"no usable device has any of the tags {', '.join(tags)}: "
                                f"{why}")
    classes = {(d.profile or {}).get("isa"): d.id for d in devices}
    accs = {(d.profile or {}).get("accelerator") for d in devices}
    if len(classes) > 1 or len(accs) > 1:
        raise ConflictError("the devices differ in hardware class (" + ", ".join(
            f"device {d.id}: {(d.profile or {}).get('isa')} {(d.profile or {}).get('accelerator')}"
            for d in devices) + "); one version is built for one class: narrow the tags")
    runtime = common_runtime(devices)
    if runtime is None:
        raise ConflictError("the devices share no runtime (" + "; ".join(
            f"device {d.id}: {', '.join((d.profile or {}).get('runtimes') or [])}"
            for d in devices) + "); one version is built for one runtime: narrow the tags")
    ids = [d.id for d in devices]
    stored: dict[str, Any] = {"device_ids": ids, "runtime": runtime}
    if tags is not None:
        stored["tags"] = tags
        left = {str(i): r for i, r in reasons.items() if r}
        if left:
            stored["left_out"] = left
        label = f"devices:{','.join(tags)}"
    else:
        label = f"device:{ids[0]}"
    return label[:100], stored


def create_job(*, session: Session, model_id: int, dataset_id: int, profile: str | None,
               constraints: dict[str, Any], config: dict[str, Any],
               owner_id: int | None, target: dict[str, Any] | None = None,
               task: str | None = None) -> Job | None:
    """A queued job, or None when the model or dataset does not exist."""
    model = session.get(Model, model_id)
    dataset = session.get(Dataset, dataset_id)
    if model is None or dataset is None:
        return None
    if model.format not in COMPRESSIBLE:
        raise InvalidInputError(f"model {model_id} is {model.format}; compression takes "
                                f"{' or '.join(COMPRESSIBLE)} models")
    task = check_task(model, dataset, task)
    label, stored = resolve_target(session=session, profile=profile, target=target)
    job = Job(model_id=model_id, dataset_id=dataset_id, profile=label, target=stored, task=task,
              config=build_config(config, constraints, task), state="queued", owner_id=owner_id,
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
