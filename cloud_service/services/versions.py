"""Model versions: immutable results of jobs."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud_service import errors
from cloud_service.db import page
from cloud_service.errors import ConflictError
from cloud_service.models import ModelVersion, Rollout
from cloud_service.storage import ArtifactStore


def get_version(*, session: Session, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def list_versions(*, session: Session, offset: int, limit: int,
                  model_id: int | None = None) -> tuple[list[ModelVersion], int]:
    query = select(ModelVersion)
    if model_id is not None:
        query = query.where(ModelVersion.model_id == model_id)
    return page(session, query, ModelVersion.id.desc(), offset, limit)


def read_report(*, store: ArtifactStore, version: ModelVersion) -> dict[str, Any]:
    """The version's compression report (``docs/report.md``); ``errors.IntegrityError``
    when what is stored is not a JSON object."""
    try:
        report = json.loads(store.path(version.report_hash).read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise errors.IntegrityError(f"the stored report of version {version.id} "
                                    f"({version.report_hash[:12]}...) is not a JSON "
                                    "document") from e
    if not isinstance(report, dict):
        raise errors.IntegrityError(f"the stored report of version {version.id} is not a "
                                    "JSON object")
    return report


def next_number(*, session: Session, model_id: int) -> int:
    top = session.scalar(select(func.max(ModelVersion.number))
                         .where(ModelVersion.model_id == model_id))
    return (top or 0) + 1


def set_probe(*, session: Session, version: ModelVersion, digest: str) -> ModelVersion:
    """Replace the probe; refused once any rollout names the version (devices may hold it)."""
    used = session.scalar(select(Rollout.id).where(Rollout.version_id == version.id).limit(1))
    if used is not None:
        raise ConflictError(f"version {version.id} is in rollout {used}; its probe can no "
                            "longer change (publish a new version instead)")
    version.probe_hash = digest
    session.flush()
    return version


def create_version(*, session: Session, model_id: int, profile: str, onnx_hash: str,
                   onnx_size: int, report_hash: str, summary: dict[str, Any]) -> ModelVersion:
    """The model's next numbered version (a concurrent publication takes another number)."""
    for _ in range(5):
        try:
            with session.begin_nested():
                row = ModelVersion(model_id=model_id, profile=profile, onnx_hash=onnx_hash,
                                   number=next_number(session=session, model_id=model_id),
                                   onnx_size=onnx_size, report_hash=report_hash,
                                   summary=summary, constraints_met=True)
                session.add(row)
            return row
        except IntegrityError:
            continue
    raise ConflictError(f"could not allocate a version number for model {model_id}; retry")
