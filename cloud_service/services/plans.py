"""Jobs that update a deployed version: which version, checked at submission, and which
model line the new version continues (``hadmc_core.update`` does the compression)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_service.errors import ConflictError
from cloud_service.models import Job, Model, ModelVersion

ARCH_KEYS = ("arch", "in_channels", "num_classes", "stem", "width")


def _architecture(model: Model) -> dict[str, Any]:
    if model.format == "onnx":
        return {"format": "onnx", "inputs": (model.details or {}).get("inputs")}
    return {"format": model.format, **{k: (model.arch or {}).get(k) for k in ARCH_KEYS}}


def _base_of(session: Session, version: ModelVersion) -> Model | None:
    """The base model the version was compressed from (its job's model)."""
    job = session.get(Job, version.job_id) if version.job_id is not None else None
    return session.get(Model, job.model_id if job is not None else version.model_id)


def check_update_of(*, session: Session, model: Model, version_id: int) -> ModelVersion | None:
    """The version a job on ``model`` (the new base) may update; None when it does not
    exist. ConflictError (409) when it is of another model line or architecture, or was
    published rather than compressed (it has no plan to keep).

    The new version continues the line of ``version_id``. A base model with versions of
    its own is a line of its own, so it may update only its own line's versions; a base
    without versions (fine-tuned weights uploaded for a deployed line) may update any line
    of its architecture.
    """
    version = session.get(ModelVersion, version_id)
    if version is None:
        return None
    own = session.scalar(select(func.count()).select_from(ModelVersion)
                         .where(ModelVersion.model_id == model.id)) or 0
    if own and version.model_id != model.id:
        raise ConflictError(f"version {version_id} is of model line model-{version.model_id}, "
                            f"but model {model.id} has versions of its own (line "
                            f"model-{model.id}); update a version of that line, or upload the "
                            "new weights as a new model")
    if version.job_id is None:
        raise ConflictError(f"version {version_id} was published as a ready ONNX file, not "
                            "compressed by a job; it has no plan to keep")
    base = _base_of(session, version)
    if base is not None:
        theirs, ours = _architecture(base), _architecture(model)
        if theirs != ours:
            diff = ", ".join(f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in theirs
                             if theirs.get(k) != ours.get(k))
            raise ConflictError(f"version {version_id} was compressed from another "
                                f"architecture than model {model.id} ({diff})")
    return version


def line_of(job: Job, session: Session) -> int:
    """The model line (model id) a job's version joins: its update_of version's line, else
    its own model's."""
    if job.update_of_id is not None:
        version = session.get(ModelVersion, job.update_of_id)
        if version is not None:
            return version.model_id
    return job.model_id
