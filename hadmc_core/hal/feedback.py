"""A device's correction of its table's predictions from the p50s it reported.

A device's operator table (one-layer graphs) with its whole-model term
(``hadmc_core.hal.wholeterm``) predicts what a candidate costs on the device before the
device ever ran it; a version the device then runs is timed for real (the agent's smoke
test, reported as its p50). Each such version gives one *pair*: the table's prediction of
that version for that device, and the p50 the device measured. The correction scales the
device's further table predictions by

    factor = exp(median(log(measured / predicted)))   over the pairs,

clipped to ``FACTOR_RANGE``. It is **multiplicative only**, whatever the number of pairs:

- the table's error is mostly a ratio: the one-layer graphs' call overhead and the
  whole-model term miss by a share of the model's time that stays close across the
  candidates of one model (pruned or not, INT8 or not), which one deployed version
  already measures;
- an affine fit ``measured = a + b * predicted`` needs pairs that differ in size, and the
  versions a device reports are mostly of one model at close sizes, so its slope would
  rest on noise and extrapolate badly to a candidate smaller or larger than them;
- the median of the log ratios ignores a minority of outliers (a p50 taken while the
  device was busy, a version built from another table); with two pairs it is their
  geometric mean.

Pure arithmetic, torch-free; ``combine`` gives a group's correction (the largest factor,
as a group's tables are combined by their upper envelope).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: A factor outside this range is clipped to it (and the correction says so): a table off
#: by more than 25x in either direction is broken, not to be scaled.
FACTOR_RANGE = (0.04, 25.0)


class Pair(NamedTuple):
    """A version's table prediction for a device and the p50 the device measured."""

    predicted_ms: float
    measured_ms: float
    #: where the pair comes from (a version id), kept in the report
    version: int | str | None = None


@dataclass(frozen=True)
class Correction:
    """``factor`` times the table's prediction; ``pairs`` how many pairs it rests on,
    ``versions`` which versions they came from; ``clipped``: the median ratio was outside
    ``FACTOR_RANGE``."""

    factor: float
    pairs: int
    versions: list[int | str] = field(default_factory=list)
    clipped: bool = False
    #: a group's correction: the factor of each device that had pairs
    per_device: dict[str, float] | None = None

    def apply(self, ms: float) -> float:
        return ms * self.factor

    @property
    def source(self) -> str:
        return f"device table, corrected by {self.pairs} reported p50" + \
            ("" if self.pairs == 1 else "s")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"factor": round(self.factor, 6), "pairs": self.pairs,
                               "versions": list(self.versions), "clipped": self.clipped,
                               "source": self.source}
        if self.per_device is not None:
            out["per_device"] = dict(self.per_device)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Correction:
        per = data.get("per_device")
        return cls(float(data["factor"]), int(data["pairs"]), list(data.get("versions") or []),
                   bool(data.get("clipped", False)),
                   {str(k): float(v) for k, v in per.items()} if per else None)


def _valid(p: Pair) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
               for v in (p.predicted_ms, p.measured_ms))


def correction(pairs: Iterable[Pair | tuple[float, float]]) -> Correction | None:
    """The correction from ``pairs`` (see module doc); pairs with a non-positive or
    non-finite figure are left out; None when no pair is left."""
    good = [p for p in (q if isinstance(q, Pair) else Pair(*q) for q in pairs) if _valid(p)]
    if not good:
        return None
    logs = sorted(math.log(p.measured_ms / p.predicted_ms) for p in good)
    n = len(logs)
    mid = logs[n // 2] if n % 2 else (logs[n // 2 - 1] + logs[n // 2]) / 2
    raw = math.exp(mid)
    lo, hi = FACTOR_RANGE
    factor = min(max(raw, lo), hi)
    return Correction(factor, n, [p.version for p in good if p.version is not None],
                      clipped=factor != raw)


def combine(per_device: dict[str, Correction | None]) -> Correction | None:
    """A group's correction from its devices' own: the largest factor, a device without
    pairs counting as 1 (its table's prediction as it is). Every device's own corrected
    prediction stays at or below the group's, since the group's table is the upper
    envelope of theirs. None when no device has pairs."""
    have = {d: c for d, c in per_device.items() if c is not None}
    if not have:
        return None
    factors = [c.factor for c in have.values()]
    if len(have) < len(per_device):
        factors.append(1.0)
    versions: list[int | str] = []
    for c in have.values():
        versions += [v for v in c.versions if v not in versions]
    return Correction(max(factors), sum(c.pairs for c in have.values()), versions,
                      clipped=any(c.clipped for c in have.values()),
                      per_device={d: c.factor for d, c in have.items()})

