"""Names and labels several pages show, read through the service functions."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session

from cloud_service.services import datasets as datasets_svc
from cloud_service.services import models as models_svc
from cloud_service.services import versions as versions_svc

MAX_ROWS = 10_000


def flush_heartbeats(request: Request) -> None:
    """Heartbeats this process accepted are written before a page reads devices (as the
    REST routes of devices do)."""
    if request.app.state.heartbeats is not None:
        request.app.state.heartbeats.flush()


def model_names(session: Session) -> dict[int, str]:
    return {m.id: m.name for m in models_svc.list_models(session=session, offset=0,
                                                         limit=MAX_ROWS)[0]}


def dataset_names(session: Session) -> dict[int, str]:
    return {d.id: d.name for d in datasets_svc.list_datasets(session=session, offset=0,
                                                             limit=MAX_ROWS)[0]}


def version_labels(session: Session, version_ids: set[int]) -> dict[int, dict[str, Any]]:
    """Per version id: its model's name and id and the version number."""
    models = model_names(session)
    out = {}
    for vid in version_ids:
        ver = versions_svc.get_version(session=session, version_id=vid)
        if ver is not None:
            out[vid] = {"model_id": ver.model_id, "model": models.get(ver.model_id, "?"),
                        "number": ver.number}
    return out
