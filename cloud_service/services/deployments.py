"""Deployments: one row per (device, model) with the version the device runs of that model
and the one it ran before. Update reports move them (``services.desired``); heartbeats
confirm them (``services.heartbeats``, ``services.devices``); rollouts read them to plan,
to decide what a device should run and where a rollback goes.

A version belongs to one model and version ids are unique across models, so a report or a
heartbeat that names a version also names its model. A device's first deployment is its
primary model: what an agent that runs one model only is told (``services.desired``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Integer, Table, bindparam, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud_service.db import UTCDateTime
from cloud_service.errors import InvalidInputError
from cloud_service.models import Deployment, Device, ModelVersion, UpdateReport

_deployments = cast(Table, Deployment.__table__)
_versions = cast(Table, ModelVersion.__table__)
_devices = cast(Table, Device.__table__)


def get(session: Session, device_id: int, model_id: int, *, lock: bool = False
        ) -> Deployment | None:
    query = select(Deployment).where(Deployment.device_id == device_id,
                                     Deployment.model_id == model_id)
    return session.scalar(query.with_for_update() if lock else query)


def get_or_create(session: Session, device_id: int, model_id: int, now: datetime
                  ) -> Deployment:
    found = get(session, device_id, model_id, lock=True)
    if found is not None:
        return found
    dep = Deployment(device_id=device_id, model_id=model_id, updated_at=now)
    try:
        with session.begin_nested():
            session.add(dep)
    except IntegrityError:  # a heartbeat of the device inserted it meanwhile
        dep = cast(Deployment, get(session, device_id, model_id, lock=True))
    dev = session.get(Device, device_id)
    if dev is not None:
        session.expire(dev, ["deployments"])
    return dep


def running(session: Session, device_id: int, model_id: int) -> int | None:
    """The version of ``model_id`` the device runs (None: it runs no version of it)."""
    return session.scalar(select(Deployment.current_version_id).where(
        Deployment.device_id == device_id, Deployment.model_id == model_id))


def by_device(session: Session, device_ids: list[int]) -> dict[int, list[Deployment]]:
    """Each device's deployments, oldest (primary) first."""
    out: dict[int, list[Deployment]] = {d: [] for d in device_ids}
    for dep in session.scalars(select(Deployment).where(Deployment.device_id.in_(device_ids))
                               .order_by(Deployment.id)):
        out[dep.device_id].append(dep)
    return out


def confirm_versions(session: Session, rows: list[dict[str, Any]]) -> None:
    """What heartbeats say: each ``{"b_id": device, "b_vid": version, "b_at": when}`` sets
    the device's deployment of that version's model to run it (creating the deployment),
    unless the device sent an update report after ``b_at`` (the report is newer) or is
    revoked. Two ``executemany`` statements for any number of rows."""
    if not rows:
        return
    b_id, b_vid = bindparam("b_id", type_=Integer), bindparam("b_vid", type_=Integer)
    b_at = bindparam("b_at", type_=UTCDateTime())
    model_of = select(_versions.c.model_id).where(_versions.c.id == b_vid).scalar_subquery()
    newer_report = exists().where(UpdateReport.device_id == b_id,
                                  UpdateReport.created_at > b_at)
    live = exists().where(_devices.c.id == b_id, _devices.c.revoked_at.is_(None))
    session.execute(update(_deployments).where(
        _deployments.c.device_id == b_id, _deployments.c.model_id == model_of,
        _deployments.c.current_version_id.is_distinct_from(b_vid), ~newer_report, live)
        .values(current_version_id=b_vid), rows)
    absent = ~exists().where(_deployments.c.device_id == b_id,
                             _deployments.c.model_id == _versions.c.model_id)
    insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql"
              else sqlite.insert)(_deployments)
    session.execute(insert.from_select(
        ["device_id", "model_id", "current_version_id", "updated_at"],
        select(b_id, _versions.c.model_id, b_vid, b_at)
        .where(_versions.c.id == b_vid, absent, ~newer_report, live))
        .on_conflict_do_nothing(), rows)


def check_claims(session: Session, claims: dict[int, str | None]) -> dict[int, str]:
    """``{version id: model line or None}`` a device says it runs → ``{version id: its
    model line}``; InvalidInputError for a version that does not exist or is not of the
    model named with it."""
    if not claims:
        return {}
    found = {vid: f"model-{mid}" for vid, mid in session.execute(
        select(ModelVersion.id, ModelVersion.model_id)
        .where(ModelVersion.id.in_(list(claims))))}
    for vid, model in claims.items():
        if vid not in found:
            raise InvalidInputError(f"model version {vid} does not exist")
        if model is not None and model != found[vid]:
            raise InvalidInputError(f"model version {vid} is a version of {found[vid]}, "
                                    f"not of {model}")
    return found
