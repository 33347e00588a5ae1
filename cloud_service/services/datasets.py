"""Datasets: built-in names or uploaded .npz files validated with hadmc_core.data."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_service.errors import InvalidInputError
from cloud_service.models import Dataset
from cloud_service.storage import ArtifactStore


def describe_npz(store: ArtifactStore, digest: str) -> dict[str, Any]:
    """Load the stored .npz with hadmc_core (no pickle) and summarize it."""
    from hadmc_core.data import load_dataset
    from hadmc_core.errors import HadmcError

    with tempfile.TemporaryDirectory() as tmp:
        path = store.link_as(digest, Path(tmp), "data.npz")
        try:
            data = load_dataset(str(path))
        except HadmcError as e:
            raise InvalidInputError(str(e).replace(str(path), "the upload")) from e
    return {"num_classes": data.num_classes, "in_channels": data.in_channels,
            "image_size": list(data.image_size),
            "samples": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}}


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
