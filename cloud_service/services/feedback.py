"""A device's latency correction from the p50s it reported (``hadmc_core.hal.feedback``).

A version built for a device (or a group) keeps, in its summary's ``target.table_ms``, the
prediction of each targeted device's own table (and whole-model term) before any
correction, and in ``target.table_precision`` the precision of the largest share of its
layer time (which of the device's factors its p50 informs). Each version a device then
reported a p50 for (the same reports as a version's measured latency:
``services.updates.measured``) and that holds such a prediction for that device is one
pair. A version built for another device, for a profile, or before the predictions were
kept gives none: its prediction did not come from this device's table.

Pairs from versions of the job's own model line are used when there are any (a table's
error depends on the architecture); otherwise those of every model the device ran. The
newest ``MAX_PAIRS`` count.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_service.models import ModelVersion
from cloud_service.services.updates import reported_latency

if TYPE_CHECKING:
    from hadmc_core.hal.feedback import Correction, Pair

#: The newest versions a device's correction rests on.
MAX_PAIRS = 20


def reported_p50s(*, session: Session, device_id: int) -> dict[int, float]:
    """Per version, the p50 the device measured for it (``services.updates``' reports)."""
    return {vid: p50 for (vid, _), (p50, _) in
            reported_latency(session=session, device_id=device_id).items()}


def _prediction(summary: dict[str, Any] | None, device_id: int
                ) -> tuple[float, str] | None:
    target = (summary or {}).get("target") or {}
    value = (target.get("table_ms") or {}).get(str(device_id))
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value <= 0:
        return None
    return float(value), str(target.get("table_precision") or "fp32")


def device_pairs(*, session: Session, device_id: int, model_id: int | None
                 ) -> tuple[list[Pair], bool]:
    """The device's pairs, newest version first, and whether they are of ``model_id``'s
    line (else of every model it ran)."""
    from hadmc_core.hal.feedback import Pair

    p50s = reported_p50s(session=session, device_id=device_id)
    if not p50s:
        return [], False
    rows = session.execute(select(ModelVersion.id, ModelVersion.model_id, ModelVersion.summary)
                           .where(ModelVersion.id.in_(p50s)).order_by(ModelVersion.id.desc()))
    found = [(line, Pair(pred[0], p50s[vid], pred[1], vid)) for vid, line, summary in rows
             if (pred := _prediction(summary, device_id)) is not None]
    same = [p for line, p in found if line == model_id]
    pairs = same or [p for _, p in found]
    return pairs[:MAX_PAIRS], bool(same)


def correction_for(*, session: Session, device_ids: list[int], model_id: int | None
                   ) -> tuple[Correction | None, list[str]]:
    """The correction of a job for ``device_ids`` (those whose tables its latency model
    uses): one device's own, or a group's combined (``hadmc_core.hal.feedback.combine``);
    and a note per device that has one."""
    from hadmc_core.hal import feedback

    per: dict[str, Correction | None] = {}
    notes = []
    for d in device_ids:
        pairs, same = device_pairs(session=session, device_id=d, model_id=model_id)
        per[str(d)] = c = feedback.correction(pairs)
        if c is not None:
            which = "this model's versions" if same else "versions of other models"
            factors = ", ".join(f"{p} x{f:.3g} ({c.pairs[p]})" for p, f in c.factors.items())
            notes.append(f"device {d}: its table's predictions scaled per precision by the "
                         f"median measured/predicted over the p50s it reported for {which} "
                         f"({', '.join(map(str, c.versions))}): {factors}"
                         + (f", clipped to {feedback.FACTOR_RANGE}" if c.clipped else ""))
    if len(device_ids) == 1:
        return per[str(device_ids[0])], notes
    return feedback.combine(per), notes
