"""What devices reported after updates: a device's update history, and the latency a
version measures on the devices that run it."""

from __future__ import annotations

import statistics
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_service.db import page
from cloud_service.models import Rollout, RolloutDevice, UpdateReport


def list_update_reports(*, session: Session, device_id: int, offset: int, limit: int
                        ) -> tuple[list[UpdateReport], int]:
    """The device's update and rollback reports, newest first, and their count."""
    query = select(UpdateReport).where(UpdateReport.device_id == device_id)
    return page(session, query, UpdateReport.id.desc(), offset, limit)


def measured_p50(*, session: Session, version_id: int) -> dict[str, Any]:
    """The version's latency as devices measured it: per device the p50 of its newest
    committed update report for the version, or else of its row in a rollout of the
    version; and the median over devices.

    ``{"median_ms": float | None, "devices": n, "per_device": {device_id: p50_ms}}``."""
    per_device: dict[int, float] = {}
    reports = session.execute(
        select(UpdateReport.device_id, UpdateReport.p50_ms)
        .where(UpdateReport.version_id == version_id, UpdateReport.ok.is_(True),
               UpdateReport.p50_ms.is_not(None))
        .order_by(UpdateReport.id))
    for device_id, p50 in reports:  # newest last, so it wins
        if p50 is not None:
            per_device[device_id] = p50
    rows = session.execute(
        select(RolloutDevice.device_id, RolloutDevice.p50_ms).join(Rollout)
        .where(Rollout.version_id == version_id, RolloutDevice.status == "succeeded",
               RolloutDevice.p50_ms.is_not(None))
        .order_by(RolloutDevice.rollout_id))
    for device_id, p50 in rows:
        if p50 is not None:
            per_device.setdefault(device_id, p50)
    values = list(per_device.values())
    return {"median_ms": statistics.median(values) if values else None,
            "devices": len(values), "per_device": per_device}
