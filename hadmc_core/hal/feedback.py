"""A device's correction of its table's predictions from the p50s it reported.

A device's operator table (one-layer graphs) with its whole-model term
(``hadmc_core.hal.wholeterm``) predicts what a candidate costs on the device before the
device ever ran it; a version the device then runs is timed for real (the agent's smoke
test, reported as its p50). Each such version gives one *pair*: the table's prediction of
that version for that device, the p50 the device measured, and the version's precision
(the precision of the largest share of its layer time: ``fp32``, or ``int8`` for an INT8
or mixed version). Per precision, the correction scales the device's further table
predictions by

    factor[p] = exp(median(log(measured / predicted)))   over the pairs of precision p,

clipped to ``FACTOR_RANGE``; the latency model multiplies each precision's share of a
whole-model estimate by its factor (``LatencyModel.model_ms``), a precision without pairs
by 1. It is **multiplicative only**, whatever the number of pairs:

- the table's error is mostly a ratio per precision: the one-layer graphs' call overhead
  and the whole-model term miss by a share of the model's time that stays close across
  the FP32 candidates of one model (pruned or not), which one deployed version measures;
  the INT8 graphs' error is another (bench/latency_model.py: the FP32 ratio applied to
  INT8 candidates doubled ResNet-18's error on ONNX Runtime), hence one factor per
  precision and none borrowed from the other;
- an affine fit ``measured = a + b * predicted`` needs pairs that differ in size, and the
  versions a device reports are mostly of one model at close sizes, so its slope would
  rest on noise and extrapolate badly to a candidate smaller or larger than them;
- the median of the log ratios ignores a minority of outliers (a p50 taken while the
  device was busy); with two pairs it is their geometric mean.

Pure arithmetic, torch-free; ``combine`` gives a group's correction (per precision the
largest factor, as a group's tables are combined by their upper envelope).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: A factor outside this range is clipped to it (and the correction says so): a table off
#: by more than 25x in either direction is broken, not to be scaled.
FACTOR_RANGE = (0.04, 25.0)


class Pair(NamedTuple):
    """A version's table prediction for a device, the p50 the device measured, and the
    version's precision (that of the largest share of its layer time)."""

    predicted_ms: float
    measured_ms: float
    precision: str = "fp32"
    #: where the pair comes from (a version id), kept in the report
    version: int | str | None = None


@dataclass(frozen=True)
class Correction:
    """``factors[p]`` times the share of precision ``p`` in the table's prediction;
    ``pairs[p]`` how many pairs each rests on, ``versions`` which versions they came
    from; ``clipped``: a median ratio was outside ``FACTOR_RANGE``."""

    factors: dict[str, float]
    pairs: dict[str, int]
    versions: list[int | str] = field(default_factory=list)
    clipped: bool = False
    #: a group's correction: the factors of each device that had pairs
    per_device: dict[str, dict[str, float]] | None = None

    def factor(self, precision: str) -> float:
        return self.factors.get(precision, 1.0)

    @property
    def count(self) -> int:
        return sum(self.pairs.values())

    @property
    def source(self) -> str:
        n = self.count
        return f"device table, corrected by {n} reported p50" + ("" if n == 1 else "s")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "factors": {p: round(f, 6) for p, f in self.factors.items()},
            "pairs": dict(self.pairs), "versions": list(self.versions),
            "clipped": self.clipped, "source": self.source}
        if self.per_device is not None:
            out["per_device"] = {d: dict(f) for d, f in self.per_device.items()}
        return out


def _valid(p: Pair) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
               for v in (p.predicted_ms, p.measured_ms))


def _median_ratio(pairs: list[Pair]) -> float:
    return math.exp(statistics.median(math.log(p.measured_ms / p.predicted_ms)
                                      for p in pairs))


def correction(pairs: Iterable[Pair | tuple[float, float]]) -> Correction | None:
    """The correction from ``pairs`` (see module doc); pairs with a non-positive or
    non-finite figure are left out; None when no pair is left."""
    good = [p for p in (q if isinstance(q, Pair) else Pair(*q) for q in pairs) if _valid(p)]
    if not good:
        return None
    lo, hi = FACTOR_RANGE
    factors, counts, clipped = {}, {}, False
    for precision in sorted({p.precision for p in good}):
        mine = [p for p in good if p.precision == precision]
        raw = _median_ratio(mine)
        factors[precision] = min(max(raw, lo), hi)
        counts[precision] = len(mine)
        clipped = clipped or factors[precision] != raw
    return Correction(factors, counts, [p.version for p in good if p.version is not None],
                      clipped=clipped)


def combine(per_device: dict[str, Correction | None]) -> Correction | None:
    """A group's correction from its devices' own: per precision the largest factor, a
    device without pairs of that precision counting as 1 (its table's prediction as it
    is). Every device's own corrected prediction stays at or below the group's, since the
    group's table is the upper envelope of theirs. None when no device has pairs."""
    have = {d: c for d, c in per_device.items() if c is not None}
    if not have:
        return None
    factors: dict[str, float] = {}
    counts: dict[str, int] = {}
    for p in sorted({p for c in have.values() for p in c.factors}):
        mine = [c.factors[p] for c in have.values() if p in c.factors]
        factors[p] = max([*mine, 1.0] if len(mine) < len(per_device) else mine)
        counts[p] = sum(c.pairs.get(p, 0) for c in have.values())
    versions: list[int | str] = []
    for c in have.values():
        versions += [v for v in c.versions if v not in versions]
    return Correction(factors, counts, versions,
                      clipped=any(c.clipped for c in have.values()),
                      per_device={d: dict(c.factors) for d, c in have.items()})
