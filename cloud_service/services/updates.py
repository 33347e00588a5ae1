"""What devices reported after updates: a device's update history, and the latency a
version measures on the devices that run it against what its report predicted."""

from __future__ import annotations

import math
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


def reported_latency(*, session: Session, version_id: int | None = None,
                     device_id: int | None = None
                     ) -> dict[tuple[int, int], tuple[float, float | None]]:
    """Per ``(version, device)``, ``(p50_ms, p95_ms)`` as the device measured the version:
    its newest successful update report for the version that carries a p50, or else its
    row in a rollout of the version that it succeeded in (no p95 there). Narrowed to one
    version and/or one device when given."""
    out: dict[tuple[int, int], tuple[float, float | None]] = {}
    query = (select(UpdateReport.version_id, UpdateReport.device_id, UpdateReport.p50_ms,
                    UpdateReport.p95_ms)
             .where(UpdateReport.ok.is_(True), UpdateReport.p50_ms.is_not(None),
                    UpdateReport.version_id.is_not(None))
             .order_by(UpdateReport.id))
    if version_id is not None:
        query = query.where(UpdateReport.version_id == version_id)
    if device_id is not None:
        query = query.where(UpdateReport.device_id == device_id)
    for vid, did, p50, p95 in session.execute(query):  # newest last, so it wins
        if vid is not None and p50 is not None:
            out[(vid, did)] = (p50, p95)
    rows = (select(Rollout.version_id, RolloutDevice.device_id, RolloutDevice.p50_ms)
            .join(Rollout)
            .where(RolloutDevice.status == "succeeded", RolloutDevice.p50_ms.is_not(None))
            .order_by(RolloutDevice.rollout_id))
    if version_id is not None:
        rows = rows.where(Rollout.version_id == version_id)
    if device_id is not None:
        rows = rows.where(RolloutDevice.device_id == device_id)
    for vid, did, p50 in session.execute(rows):
        if vid is not None and p50 is not None:
            out.setdefault((vid, did), (p50, None))
    return out


def measured(*, session: Session, version_id: int) -> dict[int, tuple[float, float | None]]:
    """Per device, ``(p50_ms, p95_ms)`` of the version as the device measured it
    (``reported_latency``)."""
    return {did: v for (_, did), v in
            reported_latency(session=session, version_id=version_id).items()}


def predicted(report: dict[str, Any]) -> tuple[float | None, str | None]:
    """The report's latency of the compressed model on its target and where it comes
    from (``latency_source``: measured, device_table or estimated; docs/report.md)."""
    ms = (report.get("compressed") or {}).get("latency_ms")
    source = report.get("latency_source")
    value = float(ms) if isinstance(ms, (int, float)) and not isinstance(ms, bool) else None
    if value is not None and not math.isfinite(value):
        value = None
    return value, (source if isinstance(source, str) else None)


def version_latency(*, session: Session, version_id: int, report: dict[str, Any]
                    ) -> dict[str, Any]:
    """Predicted against measured latency of a version: the report's prediction with its
    source and the latency model behind it (``latency_model``: e.g.
    ``device-table+whole-model-term``), the median p50 and p95 over the devices that
    reported the version, how many, and the error of the prediction,
    ``(predicted - measured) / measured`` in percent (negative: the prediction was faster
    than the devices)."""
    ms, source = predicted(report)
    per = measured(session=session, version_id=version_id)
    p50s = [p50 for p50, _ in per.values()]
    p95s = [p95 for _, p95 in per.values() if p95 is not None]
    median = statistics.median(p50s) if p50s else None
    error = (round(100.0 * (ms - median) / median, 1)
             if ms is not None and median else None)
    model = report.get("latency_model")
    return {"predicted_ms": ms, "predicted_source": source,
            "predicted_model": model if isinstance(model, str) else None,
            "measured_p50_ms": median,
            "measured_p95_ms": statistics.median(p95s) if p95s else None,
            "devices": len(p50s), "error_pct": error,
            "per_device": [{"device_id": d, "p50_ms": p50, "p95_ms": p95}
                           for d, (p50, p95) in sorted(per.items())]}
