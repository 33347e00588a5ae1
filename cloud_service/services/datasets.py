"""Datasets: built-in names or uploaded .npz files validated with hadmc_core.data."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_service.errors import InvalidInputError, PayloadTooLargeError
from cloud_service.models import Dataset
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore

#: The setting behind each limit of ``hadmc_core.data.describe_npz``.
LIMIT_SETTINGS = {"bytes": "HADMC_MAX_DATASET_DECOMPRESSED_MB",
                  "samples": "HADMC_MAX_DATASET_SAMPLES"}


def describe_npz(store: ArtifactStore, digest: str, settings: Settings) -> dict[str, Any]:
    """Check the stored .npz from its headers (bounded memory, no pickle) and summarize it;
    PayloadTooLargeError over the dataset limits, InvalidInputError when it is invalid."""
    from hadmc_core.data import describe_npz
    from hadmc_core.errors import DatasetTooLargeError, HadmcError

    try:
        return describe_npz(store.path(digest), max_bytes=settings.max_dataset_decompressed_bytes,
                            max_samples=settings.max_dataset_samples, source="the upload")
    except DatasetTooLargeError as e:
        raise PayloadTooLargeError(f"{e} ({LIMIT_SETTINGS[e.limit]})") from e
    except HadmcError as e:
        raise InvalidInputError(str(e)) from e


def create_dataset(*, session: Session, name: str, builtin: str | None = None,
                   digest: str | None = None, size: int = 0,
                   details: dict[str, Any] | None = None, owner_id: int | None) -> Dataset:
    row = Dataset(name=name, builtin=builtin, artifact_hash=digest, size_bytes=size,
                  details=details or {}, owner_id=owner_id)
    session.add(row)
    session.flush()
    return row


def get_dataset(*, session: Session, dataset_id: int) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def list_datasets(*, session: Session, offset: int, limit: int) -> tuple[list[Dataset], int]:
    rows = session.scalars(select(Dataset).order_by(Dataset.id.desc()).offset(offset)
                           .limit(limit))
    return list(rows), session.scalar(select(func.count(Dataset.id))) or 0
