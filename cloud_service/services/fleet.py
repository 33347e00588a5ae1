"""The fleet at a glance: each device's state, and counts by state, version and rollout.

One rule decides a device's state, for ``/metrics``, the dashboard and the fleet overview:

1. ``updating``: its row in the latest rollout that reached it (of any of its models) is
   ``assigned`` while that rollout is active or paused (it has not committed the version
   yet);
2. ``failed``: its row in the latest rollout that reached it (of any of its models) is
   ``failed``;
3. ``offline``: not heard from (heartbeat, profile or latency report; registration for a
   device that has never reported) for longer than the offline threshold;
4. ``updating``: its last heartbeat status starts with ``updating`` or ``probation`` (what
   the agent says while it moves, in a rollout or to obey a rollback order);
5. ``online`` otherwise.

The first rule that holds wins. A device in an open rollout stays ``updating`` when it goes
quiet (an agent restarts while it switches versions; the wave's timeout decides), while a
heartbeat status counts only as long as the device is heard from. Revoked devices have no
state and are never counted. "The latest rollout that reached it" is, per model, the one
the desired version of that model comes from (``services.desired``): the newest rollout
of a version of the model in which the device is neither ``pending`` nor ``skipped``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, get_args

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from cloud_service.models import (
    Deployment,
    Device,
    ModelVersion,
    Rollout,
    RolloutDevice,
    UpdateReport,
)
from cloud_service.schemas_rollouts import DeviceStatus, Phase, RolloutState
from cloud_service.settings import Settings

DeviceState = Literal["online", "offline", "updating", "failed"]
STATES: tuple[DeviceState, ...] = ("online", "offline", "updating", "failed")
OPEN_ROLLOUTS = ("active", "paused")
#: Heartbeat statuses of an agent that is moving to a version or watching one on probation.
MOVING_STATUSES = ("updating", "probation")
#: Phases an update report may name.
PHASES: tuple[str, ...] = get_args(Phase)


class DeviceFacts(Protocol):
    """What the rule reads of a device: a ``Device`` row or a row of these columns."""

    @property
    def last_seen_at(self) -> datetime | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def status(self) -> str | None: ...


@dataclass(frozen=True)
class Placement:
    """A device's row in the latest rollout that reached it."""

    rollout_id: int
    status: str  # rollout_devices.status
    rollout_state: str  # rollouts.state


def offline_threshold(settings: Settings) -> float:
    """Seconds of silence after which a device is offline, as seen in the database:
    ``HADMC_OFFLINE_AFTER_SECONDS`` plus the write-behind delay of heartbeats."""
    return settings.offline_after_seconds + settings.heartbeat_flush_seconds


def device_state(device: DeviceFacts, now: datetime, *, offline_after_seconds: float,
                 placement: Placement | None = None) -> DeviceState:
    """The device's state by the rule above; ``placement`` is its row in the latest rollout
    that reached it (``placements``), None when no rollout did."""
    if placement is not None and placement.status == "assigned" \
            and placement.rollout_state in OPEN_ROLLOUTS:
        return "updating"
    if placement is not None and placement.status == "failed":
        return "failed"
    seen = device.last_seen_at or device.created_at
    if now - seen > timedelta(seconds=offline_after_seconds):
        return "offline"
    if (device.status or "").lower().startswith(MOVING_STATUSES):
        return "updating"
    return "online"


def placements(*, session: Session, device_ids: list[int] | None = None
               ) -> dict[int, Placement]:
    """Each device's row in the latest rollout that reached it, per model; of those, the
    one that decides its state (assigned in an open rollout, else failed, else the
    latest). Devices no rollout reached are absent; ``device_ids`` limits the query to
    those devices."""
    reached = RolloutDevice.status.not_in(("pending", "skipped"))
    latest = (select(RolloutDevice.device_id, ModelVersion.model_id,
                     func.max(RolloutDevice.rollout_id).label("rid"))
              .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
              .join(ModelVersion, ModelVersion.id == Rollout.version_id)
              .where(reached).group_by(RolloutDevice.device_id, ModelVersion.model_id))
    if device_ids is not None:
        latest = latest.where(RolloutDevice.device_id.in_(device_ids))
    sub = latest.subquery()
    rows = session.execute(
        select(RolloutDevice.device_id, RolloutDevice.rollout_id, RolloutDevice.status,
               Rollout.state)
        .join(sub, and_(RolloutDevice.device_id == sub.c.device_id,
                        RolloutDevice.rollout_id == sub.c.rid))
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id))
    out: dict[int, Placement] = {}
    for dev, rid, status, state in rows:
        here, seen = Placement(rid, status, state), out.get(dev)
        if seen is None or _weight(here) > _weight(seen):
            out[dev] = here
    return out


def _weight(p: Placement) -> tuple[int, int]:
    moving = p.status == "assigned" and p.rollout_state in OPEN_ROLLOUTS
    return (2 if moving else 1 if p.status == "failed" else 0, p.rollout_id)


def device_states(*, session: Session, now: datetime, offline_after_seconds: float,
                  devices: list[Device]) -> dict[int, DeviceState]:
    """The state of each of ``devices`` (revoked ones left out), by device id."""
    live = [d for d in devices if d.revoked_at is None]
    where = placements(session=session, device_ids=[d.id for d in live])
    return {d.id: device_state(d, now, offline_after_seconds=offline_after_seconds,
                               placement=where.get(d.id)) for d in live}


def fleet_counts(*, session: Session, now: datetime, offline_after_seconds: float
                 ) -> dict[str, Any]:
    """Devices that are not revoked, counted by state and, per model, by the version they
    run (a device that runs two models counts once for each):

    ``{"total": N, "states": {"online": n, "offline": n, "updating": n, "failed": n},
    "versions": [{"model_id", "version_id", "number", "devices"}, ...] (by version id),
    "unversioned": n}`` (devices that run no version the server knows)."""
    rows = session.execute(
        select(Device.id, Device.last_seen_at, Device.created_at, Device.status)
        .where(Device.revoked_at.is_(None))).all()
    where = placements(session=session)
    states: Counter[str] = Counter({s: 0 for s in STATES})
    for row in rows:
        states[device_state(row, now, offline_after_seconds=offline_after_seconds,
                            placement=where.get(row.id))] += 1
    running = session.execute(
        select(Deployment.device_id, ModelVersion.id, ModelVersion.model_id,
               ModelVersion.number)
        .join(ModelVersion, ModelVersion.id == Deployment.current_version_id)
        .join(Device, Device.id == Deployment.device_id)
        .where(Device.revoked_at.is_(None))).all()
    versions: Counter[tuple[int, int, int]] = Counter(
        (vid, model, number) for _dev, vid, model, number in running)
    return {"total": len(rows), "states": dict(states),
            "versions": [{"model_id": m, "version_id": v, "number": n, "devices": c}
                         for (v, m, n), c in sorted(versions.items())],
            "unversioned": len(rows) - len({dev for dev, *_ in running})}


def rollout_counts(*, session: Session) -> dict[str, int]:
    """Rollouts by state (every state, zero included)."""
    counts = dict.fromkeys(get_args(RolloutState), 0)
    for state, n in session.execute(select(Rollout.state, func.count())
                                    .group_by(Rollout.state)):
        counts[state] = n
    return counts


def open_rollout_progress(*, session: Session) -> list[dict[str, Any]]:
    """Per open (active or paused) rollout: its version, state, current wave, and each
    wave's devices by status (``{wave: {status: n}}``, every status, zero included)."""
    rollouts = list(session.scalars(select(Rollout).where(Rollout.state.in_(OPEN_ROLLOUTS))
                                    .order_by(Rollout.id)))
    waves: dict[int, dict[int, dict[str, int]]] = {r.id: {} for r in rollouts}
    if rollouts:
        rows = session.execute(
            select(RolloutDevice.rollout_id, RolloutDevice.wave, RolloutDevice.status,
                   func.count())
            .where(RolloutDevice.rollout_id.in_(waves))
            .group_by(RolloutDevice.rollout_id, RolloutDevice.wave, RolloutDevice.status))
        for rid, wave, status, n in rows:
            waves[rid].setdefault(wave, dict.fromkeys(get_args(DeviceStatus), 0))[status] = n
    return [{"rollout_id": r.id, "version_id": r.version_id, "state": r.state,
             "current_wave": r.current_wave, "waves": waves[r.id]} for r in rollouts]


def update_report_counts(*, session: Session) -> dict[tuple[str, bool], int]:
    """Update reports ever received, by phase and outcome (``(phase, ok) -> n``)."""
    rows = session.execute(select(UpdateReport.phase, UpdateReport.ok, func.count())
                           .group_by(UpdateReport.phase, UpdateReport.ok))
    return {(phase, bool(ok)): n for phase, ok, n in rows}
