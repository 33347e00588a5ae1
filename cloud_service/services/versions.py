"""Model versions: immutable results of jobs."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_service.models import ModelVersion


def get_version(*, session: Session, version_id: int) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def list_versions(*, session: Session, offset: int, limit: int,
                  model_id: int | None = None) -> tuple[list[ModelVersion], int]:
    query = select(ModelVersion)
    if model_id is not None:
        query = query.where(ModelVersion.model_id == model_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(ModelVersion.id.desc()).offset(offset).limit(limit))
    return list(rows), count


def next_number(*, session: Session, model_id: int) -> int:
    top = session.scalar(select(func.max(ModelVersion.number))
                         .where(ModelVersion.model_id == model_id))
    return (top or 0) + 1
