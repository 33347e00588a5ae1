"""Rollouts: create (select devices, plan waves), read, and the user's state transitions.

The scheduler's decisions are in ``services.scheduler``; what a device is told is in
``services.desired``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, text
from sqlalchemy.orm import Session

from cloud_service.db import page, utcnow
from cloud_service.errors import ConflictError, InvalidInputError
from cloud_service.models import (
    Deployment,
    Device,
    ModelVersion,
    Rollout,
    RolloutDevice,
    RolloutEvent,
)
from cloud_service.services.auth import actor
from cloud_service.services.compat import misfit
from cloud_service.storage import ArtifactStore

#: Rollout states in which a device counts as taken (in one such rollout per model).
OPEN = ("active", "paused")
CREATE_LOCK = 0x6861646D63  # pg advisory lock key ("hadmc")
#: Allowed user transitions: action -> (states it may start from, state it leads to).
TRANSITIONS = {
    "pause": (("active",), "paused"),
    "resume": (("paused",), "active"),
    "abort": (("active", "paused"), "aborted"),
    "rollback": (("active", "paused", "completed", "aborted"), "rolled_back"),
}


def add_event(session: Session, rollout: Rollout, kind: str, reason: str, now: datetime,
              **details: Any) -> RolloutEvent:
    event = RolloutEvent(rollout_id=rollout.id, at=now, kind=kind, reason=reason,
                         details=details)
    session.add(event)
    rollout.updated_at = now
    return event


def wave_sizes(waves: list[float], n: int, min_per_wave: int) -> list[int]:
    """Cumulative device counts per wave: max(min, ceil(pct x N)), capped at N."""
    return [min(n, max(min_per_wave, math.ceil(pct / 100 * n - 1e-9))) for pct in waves]


def select_devices(session: Session, selector: dict[str, Any]) -> list[Device]:
    query = select(Device).where(Device.revoked_at.is_(None)).order_by(Device.id)
    if selector.get("device_ids"):
        ids = set(selector["device_ids"])
        found = list(session.scalars(query.where(Device.id.in_(ids))))
        missing = sorted(ids - {d.id for d in found})
        if missing:
            raise InvalidInputError(f"unknown or revoked devices: {missing[:20]}")
        return found
    devices = list(session.scalars(query))
    if selector.get("tags"):
        wanted = set(selector["tags"])
        devices = [d for d in devices if wanted & set(d.tags or [])]
    return devices


def _check_free(session: Session, device_ids: list[int], model_id: int) -> None:
    """A device takes part in at most one open rollout per model (rollouts of other models
    run beside it: each model is its own deployment)."""
    busy = session.execute(
        select(RolloutDevice.device_id, Rollout.id).join(Rollout)
        .join(ModelVersion, ModelVersion.id == Rollout.version_id)
        .where(Rollout.state.in_(OPEN), RolloutDevice.device_id.in_(device_ids),
               RolloutDevice.status != "skipped", ModelVersion.model_id == model_id)
        .limit(20)).all()
    if busy:
        pairs = ", ".join(f"device {d} in rollout {r}" for d, r in busy)
        raise ConflictError(f"devices already in an active rollout of model {model_id}: "
                            f"{pairs}; abort or finish it first")


def assign_wave(session: Session, rollout: Rollout, wave: int, now: datetime) -> int:
    """Move the wave's pending devices to assigned (their desired version of the rollout's
    model changes now; ``from_version_id`` is the version of that model each runs); a
    device already on the version succeeds at once, a device revoked since the rollout
    was created is skipped. Returns how many were assigned."""
    model_id = session.scalar(select(ModelVersion.model_id)
                              .where(ModelVersion.id == rollout.version_id))
    rows = session.execute(
        select(RolloutDevice, Device.revoked_at, Deployment.current_version_id)
        .join(Device, Device.id == RolloutDevice.device_id)
        .outerjoin(Deployment, and_(Deployment.device_id == RolloutDevice.device_id,
                                    Deployment.model_id == model_id))
        .where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == wave,
               RolloutDevice.status == "pending")).all()
    moved = 0
    for rd, revoked_at, running in rows:
        rd.from_version_id, rd.updated_at = running, now
        if revoked_at is not None:
            rd.status, rd.reason = "skipped", "device revoked"
        elif running == rollout.version_id:
            rd.status, rd.reason = "succeeded", "already on this version"
        else:
            rd.status = "assigned"
            moved += 1
    return moved


def _fits(session: Session, store: ArtifactStore, version: ModelVersion,
          devices: list[Device], replace_model: bool) -> tuple[list[Device], dict[int, str]]:
    """The devices the version fits, and why it does not fit each of the others."""
    fit, why = [], {}
    for dev in devices:
        reason = misfit(session=session, store=store, version=version, device=dev,
                        replace_model=replace_model)
        if reason is None:
            fit.append(dev)
        else:
            why[dev.id] = reason
    return fit, why


def create_rollout(*, session: Session, store: ArtifactStore, spec: dict[str, Any],
                   created_by: int | None) -> Rollout:
    if session.get_bind().dialect.name == "postgresql":  # creations one at a time, so two
        # concurrent ones cannot both find a device free (released at commit)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_LOCK})
    version = session.get(ModelVersion, spec["version_id"])
    if version is None:
        raise InvalidInputError(f"model version {spec['version_id']} does not exist")
    selector = {k: v for k, v in spec["selector"].items() if v is not None}
    selected = select_devices(session, selector)
    if not selected:
        raise InvalidInputError(f"the selector {selector} matches no devices")
    devices, skipped = _fits(session, store, version, selected,
                             bool(spec.get("replace_model")))
    if not devices:
        reasons = "; ".join(f"device {d}: {r}" for d, r in list(skipped.items())[:10])
        more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
        raise ConflictError(f"version {version.id} fits none of the {len(selected)} selected "
                            f"devices: {reasons}{more}")
    _check_free(session, [d.id for d in devices], version.model_id)
    now = utcnow()
    rollout = Rollout(**{**spec, "selector": selector}, state="active", current_wave=0,
                      wave_started_at=now, created_by=created_by, created_at=now,
                      updated_at=now)
    session.add(rollout)
    session.flush()
    sizes = wave_sizes(rollout.waves, len(devices), rollout.min_devices_per_wave)
    for i, dev in enumerate(devices):
        wave = next(k for k, size in enumerate(sizes) if i < size)
        session.add(RolloutDevice(rollout_id=rollout.id, device_id=dev.id, wave=wave,
                                  status="pending", updated_at=now))
    for dev_id, reason in skipped.items():  # listed in wave 0, never assigned
        session.add(RolloutDevice(rollout_id=rollout.id, device_id=dev_id, wave=0,
                                  status="skipped", reason=reason, updated_at=now))
    session.flush()
    add_event(session, rollout, "created", f"{len(devices)} devices in waves of (cumulative) "
              f"{sizes}" + (f"; {len(skipped)} skipped (the version does not fit them)"
                            if skipped else ""),
              now, devices=len(devices), wave_sizes=sizes, skipped=len(skipped),
              **actor(session=session, user_id=created_by))
    start_wave(session, rollout, 0, now)
    return rollout


def start_wave(session: Session, rollout: Rollout, wave: int, now: datetime) -> None:
    rollout.current_wave, rollout.wave_started_at = wave, now
    moved = assign_wave(session, rollout, wave, now)
    session.flush()
    add_event(session, rollout, "assigned", f"wave {wave}: {moved} devices assigned version "
              f"{rollout.version_id}", now, wave=wave, devices=moved)


def get_rollout(*, session: Session, rollout_id: int, lock: bool = False) -> Rollout | None:
    return session.get(Rollout, rollout_id, with_for_update=lock or None)


def list_rollouts(*, session: Session, offset: int, limit: int, state: str | None = None
                  ) -> tuple[list[Rollout], int]:
    query = select(Rollout)
    if state is not None:
        query = query.where(Rollout.state == state)
    return page(session, query, Rollout.id.desc(), offset, limit)


def wave_counts(*, session: Session, rollouts: list[Rollout]) -> dict[int, list[dict[str, int]]]:
    """Per rollout, per wave: {status: devices} (one grouped query for the page)."""
    out: dict[int, list[dict[str, int]]] = {r.id: [{} for _ in r.waves] for r in rollouts}
    rows = session.execute(
        select(RolloutDevice.rollout_id, RolloutDevice.wave, RolloutDevice.status, func.count())
        .where(RolloutDevice.rollout_id.in_(list(out)))
        .group_by(RolloutDevice.rollout_id, RolloutDevice.wave, RolloutDevice.status))
    for rid, wave, status, n in rows:
        out[rid][wave][status] = n
    return out


def list_rollout_devices(*, session: Session, rollout_id: int, offset: int, limit: int
                         ) -> tuple[list[RolloutDevice], int]:
    query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
    # Waves are cut in device id order, so this is also wave order.
    return page(session, query, RolloutDevice.device_id, offset, limit)


def list_events(*, session: Session, rollout_id: int, offset: int, limit: int
                ) -> tuple[list[RolloutEvent], int]:
    query = select(RolloutEvent).where(RolloutEvent.rollout_id == rollout_id)
    return page(session, query, RolloutEvent.id, offset, limit)


def roll_back_devices(session: Session, rollout: Rollout, now: datetime) -> dict[str, int]:
    """Every device that moved (or may have: assigned, cancelled) goes back to the version
    it had, with a signed order where that is lower (``services.desired``); one without a
    previous version stays."""
    counts = {"rolled_back": 0, "kept": 0}
    rows = session.scalars(select(RolloutDevice).where(
        RolloutDevice.rollout_id == rollout.id,
        RolloutDevice.status.in_(("assigned", "succeeded", "cancelled"))))
    for rd in rows:
        if rd.from_version_id is None or rd.from_version_id == rollout.version_id:
            rd.reason = "no previous version to go back to; left on this version"
            counts["kept"] += 1
            continue
        rd.status, rd.reason, rd.updated_at = "rolled_back", "rollback ordered", now
        counts["rolled_back"] += 1
    return counts


def cancel_waiting(session: Session, rollout: Rollout, now: datetime, reason: str) -> int:
    """Assigned devices that have not reported success go back to the version they had
    (``cancelled``); a late success report does not count. Returns how many."""
    rows = list(session.scalars(select(RolloutDevice).where(
        RolloutDevice.rollout_id == rollout.id, RolloutDevice.status == "assigned")))
    for rd in rows:
        rd.status, rd.reason, rd.updated_at = "cancelled", reason, now
    return len(rows)


def transition(*, session: Session, rollout_id: int, action: str, by: int | None
               ) -> Rollout | None:
    """pause | resume | abort | rollback; ConflictError when the state does not allow it.

    Pause holds every assigned device on the version it runs until resume; abort sends
    every device that has not reported success back to the version it had."""
    rollout = get_rollout(session=session, rollout_id=rollout_id, lock=True)
    if rollout is None:
        return None
    allowed, target = TRANSITIONS[action]
    if rollout.state not in allowed:
        raise ConflictError(f"cannot {action} rollout {rollout_id}: it is {rollout.state} "
                            f"(allowed from {', '.join(allowed)})")
    now = utcnow()
    details: dict[str, Any] = actor(session=session, user_id=by)
    who = details["user_name"] or by
    if action == "rollback":
        details.update(roll_back_devices(session, rollout, now))
    if action == "abort":
        details["cancelled"] = cancel_waiting(
            session, rollout, now, f"rollout aborted by user {who} before the device "
                                   "reported success")
    if action == "resume":  # the wave's timeout restarts: paused time is not counted
        rollout.wave_started_at = now
    if target in ("aborted", "rolled_back") and rollout.finished_at is None:
        rollout.finished_at = now
    rollout.state = target
    add_event(session, rollout, action, f"{action} requested by user {who}", now, **details)
    session.flush()
    return rollout
