"""Accuracy decisions that account for the validation split's noise.

A candidate is within the allowed drop when a one-sided upper confidence bound of its drop
(baseline metric minus candidate metric, points) is at most the limit, not when the point
estimate is. The bound is paired: both models are scored on the same validation images, so
the images both get right (or both wrong) cancel and only the ones they disagree on count.
At Fashion-MNIST's 5,000 validation images and 84 % top-1 an unpaired comparison has a
standard error of about 0.7 point; a paired one, for a candidate that disagrees with its
baseline on 5 % of the images, about 0.3.

Two bounds, chosen by the task (``Task.drop_bound``):

- ``paired_mean_bound``: for a metric that is the mean of per-image scores (top-1: 100 for
  right, 0 for wrong). Normal approximation of the mean paired difference, with the
  Agresti-Min adjustment (half a pseudo-image where the baseline wins by the full range,
  half where the candidate does, one where they tie): without it the bound collapses to
  the point estimate when few or no images differ, which at small n is overconfident.
- ``paired_bootstrap_bound``: for a metric that is not a per-image mean (mAP). The images
  are resampled with replacement and both models scored on the same sample each round;
  the bound is the ``confidence`` quantile of the resampled drops (percentile bootstrap).

``confidence`` 0.5 gives back the point comparison (a zero margin).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

#: Default one-sided confidence: a candidate whose true drop equals the limit passes at
#: most about 5 % of the time.
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class DropBound:
    """The drop of a candidate from the baseline on one split, in points."""

    point: float        # baseline - candidate, whole split
    upper: float        # one-sided upper confidence bound of the drop
    confidence: float
    n: int              # images compared
    method: str         # paired-normal | paired-bootstrap | point

    @property
    def margin(self) -> float:
        """What the split's noise adds to the point drop at this ``n``."""
        return self.upper - self.point

    def to_dict(self) -> dict[str, Any]:
        return {"point": round(self.point, 4), "upper": round(self.upper, 4),
                "confidence": self.confidence, "n": self.n, "method": self.method}


def z_score(confidence: float) -> float:
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def paired_mean_bound(base: np.ndarray, cand: np.ndarray, confidence: float,
                      value_range: float = 100.0) -> DropBound:
    """Bound of ``mean(base) - mean(cand)`` for per-image scores of two models on the same
    images (see module doc). ``value_range``: largest possible per-image difference."""
    b = np.asarray(base, dtype=np.float64).ravel()
    c = np.asarray(cand, dtype=np.float64).ravel()
    if b.shape != c.shape:
        raise ValueError(f"paired scores differ in length: {b.size} vs {c.size}")
    n = int(b.size)
    if n == 0:
        raise ValueError("no images to compare")
    d = b - c
    point = float(d.mean())
    z = z_score(confidence)
    if z == 0:
        return DropBound(point, point, confidence, n, "point")
    # Agresti-Min: pseudo-pairs (+range, weight 1/2), (-range, 1/2), (0, 1).
    m = n + 2.0
    mean = float(d.sum()) / m
    second = (float(np.square(d).sum()) + value_range ** 2) / m
    var = max(second - mean * mean, 0.0) / m
    upper = point + z * math.sqrt(var)
    return DropBound(point, upper, confidence, n, "paired-normal")


def paired_bootstrap_bound(metric_on: Callable[[Any, np.ndarray], float], base: Any,
                           cand: Any, n: int, confidence: float, resamples: int = 200,
                           seed: int = 0) -> DropBound:
    """Bound of ``metric(base) - metric(cand)`` where ``metric_on(result, idx)`` scores one
    model's per-image results over the images ``idx`` (with repeats)."""
    if n <= 0:
        raise ValueError("no images to compare")
    z_score(confidence)  # validates
    every = np.arange(n)
    point = float(metric_on(base, every) - metric_on(cand, every))
    if confidence == 0.5:
        return DropBound(point, point, confidence, n, "point")
    rng = np.random.default_rng(seed)
    drops = np.empty(resamples)
    for i in range(resamples):
        idx = rng.integers(0, n, n)
        drops[i] = metric_on(base, idx) - metric_on(cand, idx)
    upper = max(point, float(np.quantile(drops, confidence)))
    return DropBound(point, upper, confidence, n, "paired-bootstrap")


def within(bound: DropBound, max_drop: float) -> bool:
    """Whether the drop is within ``max_drop`` at the bound's confidence."""
    return bound.upper <= max_drop


def split_warning(margins: list[float], n: int, max_drop: float,
                  confidence: float) -> str | None:
    """A sentence when the validation split is too small for the limit: the smallest margin
    any candidate had is more than half the allowed drop, so only candidates whose
    measured drop is under the rest can pass. Says how many images would halve it."""
    if not margins or max_drop <= 0:
        return None
    smallest = min(margins)
    if smallest <= max_drop / 2:
        return None
    need = int(math.ceil(n * (smallest / (max_drop / 4)) ** 2))
    return (f"the validation split ({n} images) is small for a {max_drop:g}-point limit: at "
            f"{confidence:.0%} confidence the noise alone adds {smallest:.2f} points to every "
            f"candidate's drop, so a candidate passes only with a measured drop under "
            f"{max(0.0, max_drop - smallest):.2f}; about {need} validation images would bring "
            "that margin to a quarter of the limit (constraints.validation_images, "
            "--validation-images)")


#: Fraction of validation images on which a candidate near the limit disagrees with its
#: baseline, for sizing the split before any candidate exists: ResNet-18 and MobileNetV2
#: candidates within half a point of their Fashion-MNIST baselines disagreed on 2-3 %.
TYPICAL_DISAGREEMENT = 0.03
#: ``validation_images="auto"`` takes at most this share of the training split.
MAX_TRAIN_SHARE = 0.25


def images_for_margin(margin: float, confidence: float,
                      disagreement: float = TYPICAL_DISAGREEMENT,
                      value_range: float = 100.0) -> int:
    """Validation images at which ``paired_mean_bound`` adds about ``margin`` points to the
    drop of a candidate that disagrees with its baseline on ``disagreement`` of them."""
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    return int(math.ceil(disagreement * value_range ** 2 * (z_score(confidence) / margin) ** 2))


def auto_validation_size(n_val: int, n_train: int, max_drop: float, confidence: float) -> int:
    """How many validation images ``validation_images="auto"`` uses: enough that the noise
    margin of a typical candidate is at most half of ``max_drop``, taking the extra images
    from the training split. The dataset's own split when it is already large enough, when
    the limit is 0 or the decision is a point comparison, or when reaching the size would
    take more than ``MAX_TRAIN_SHARE`` of the training images (a small dataset keeps its
    training images for recovery, and the report's split warning says what is missing)."""
    if max_drop <= 0 or z_score(confidence) == 0:
        return n_val
    need = images_for_margin(max_drop / 2, confidence)
    if need <= n_val or need - n_val > n_train * MAX_TRAIN_SHARE:
        return n_val
    return need
