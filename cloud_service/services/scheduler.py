"""The rollout scheduler: ``tick(session, now)`` decides for every active rollout.

A rollout's current wave is judged once all its devices reported or ``wave_timeout_seconds``
passed (devices still without a report then count as failed):

- failure rate > ``max_failure_rate`` -> abort;
- median latency regression of the wave's succeeded devices (new p50 against their last
  report for the version they had before) > ``max_latency_regression`` -> abort;
- success rate >= ``success_threshold`` -> advance to the next wave, or complete;
- otherwise wait; at the timeout, abort.

Skipped devices (the version does not fit them, or they were revoked) are not counted.
An abort with ``rollback_on_abort`` also sends the devices that moved back to the version
they had (signed rollback orders).

Each decision is stored as an event with its reason. Rollout rows are locked with ``FOR
UPDATE SKIP LOCKED``, so ticks running at once in several processes never decide twice.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_service.models import LatencyReport, Rollout, RolloutDevice, UpdateReport
from cloud_service.services.rollouts import add_event, roll_back_devices, start_wave

log = logging.getLogger(__name__)


@dataclass
class Decision:
    kind: str  # advance | complete | abort | wait
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def previous_p50(session: Session, device_id: int, version_id: int | None) -> float | None:
    """The device's last reported p50 for ``version_id`` (update or latency report)."""
    if version_id is None:
        return None
    found: list[tuple[datetime, float]] = []
    for table in (UpdateReport, LatencyReport):
        row = session.execute(
            select(table.created_at, table.p50_ms)
            .where(table.device_id == device_id, table.version_id == version_id,
                   table.p50_ms.is_not(None))
            .order_by(table.created_at.desc()).limit(1)).first()
        if row is not None and row[1] is not None:
            found.append((row[0], float(row[1])))
    return max(found)[1] if found else None


def _regression(session: Session, rows: list[RolloutDevice]) -> float | None:
    ratios = []
    for rd in rows:
        if rd.status != "succeeded" or rd.p50_ms is None:
            continue
        before = previous_p50(session, rd.device_id, rd.from_version_id)
        if before:
            ratios.append(rd.p50_ms / before - 1.0)
    return statistics.median(ratios) if ratios else None


def decide(session: Session, rollout: Rollout, rows: list[RolloutDevice], now: datetime
           ) -> Decision:
    """What to do with the rollout's current wave (``rows``) at ``now``."""
    wave, n = rollout.current_wave, len(rows)
    waiting = [rd for rd in rows if rd.status == "assigned"]
    timed_out = now - rollout.wave_started_at >= timedelta(seconds=rollout.wave_timeout_seconds)
    if waiting and not timed_out:
        return Decision("wait", f"wave {wave}: {len(waiting)} of {n} devices not reported")
    failed = sum(rd.status == "failed" for rd in rows) + len(waiting)
    succeeded = sum(rd.status in ("succeeded", "rolled_back") for rd in rows)
    regression = _regression(session, rows)
    details = {"wave": wave, "devices": n, "succeeded": succeeded, "failed": failed,
               "timed_out": len(waiting), "median_latency_regression": regression}
    fail_rate = failed / n if n else 0.0
    if fail_rate > rollout.max_failure_rate:
        return Decision("abort", f"wave {wave}: {failed} of {n} devices failed or timed out "
                        f"({fail_rate:.0%} > max_failure_rate {rollout.max_failure_rate:.0%})",
                        details)
    if regression is not None and regression > rollout.max_latency_regression:
        return Decision("abort", f"wave {wave}: median p50 latency regression {regression:+.0%}"
                        f" > max_latency_regression {rollout.max_latency_regression:.0%}",
                        details)
    rate = succeeded / n if n else 1.0
    if rate >= rollout.success_threshold:
        last = rollout.current_wave >= len(rollout.waves) - 1
        return Decision("complete" if last else "advance",
                        f"wave {wave}: {succeeded} of {n} devices succeeded ({rate:.0%} >= "
                        f"success_threshold {rollout.success_threshold:.0%})", details)
    if timed_out:
        return Decision("abort", f"wave {wave}: timed out after {rollout.wave_timeout_seconds}"
                        f" s with {succeeded} of {n} devices succeeded ({rate:.0%} < "
                        f"success_threshold {rollout.success_threshold:.0%})", details)
    return Decision("wait", f"wave {wave}: {rate:.0%} succeeded, below the threshold")


def _apply(session: Session, rollout: Rollout, rows: list[RolloutDevice], d: Decision,
           now: datetime) -> None:
    for rd in rows:
        if rd.status == "assigned":  # only reached at the timeout
            rd.status, rd.updated_at = "failed", now
            rd.reason = f"no update report within {rollout.wave_timeout_seconds} s"
    if d.kind == "abort" and rollout.rollback_on_abort:
        d.details.update(roll_back_devices(session, rollout, now))
        d.reason += "; devices that moved are sent back (rollback_on_abort)"
    add_event(session, rollout, d.kind, d.reason, now, **d.details)
    if d.kind == "advance":
        start_wave(session, rollout, rollout.current_wave + 1, now)
    else:
        rollout.state = "completed" if d.kind == "complete" else "aborted"
        rollout.finished_at = now


def tick(session: Session, now: datetime) -> list[Decision]:
    """One scheduler pass over the active rollouts; returns the decisions taken (waits
    excluded). The caller commits. It signs nothing: rollback orders are signed when a
    device reads its desired state (``services.desired``), so none goes stale."""
    taken = []
    rollouts = session.scalars(select(Rollout).where(Rollout.state == "active")
                               .order_by(Rollout.id).with_for_update(skip_locked=True)).all()
    for rollout in rollouts:
        while rollout.state == "active":  # an empty wave is passed at once
            rows = list(session.scalars(select(RolloutDevice).where(
                RolloutDevice.rollout_id == rollout.id,
                RolloutDevice.wave == rollout.current_wave,
                RolloutDevice.status != "skipped")))
            d = decide(session, rollout, rows, now)
            if d.kind == "wait":
                break
            log.info("rollout %s: %s (%s)", rollout.id, d.kind, d.reason,
                     extra={"rollout_id": rollout.id})
            _apply(session, rollout, rows, d, now)
            session.flush()
            taken.append(d)
            if d.kind != "advance" or rows:
                break
    return taken
