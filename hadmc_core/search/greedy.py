"""Strategy ``greedy``: marginal allocation of per-group channel counts.

Start from the full model and repeatedly remove ``round_to`` channels from the group whose
removal costs the least importance per millisecond saved, as the latency model estimates
it for the target hardware, until the estimate meets the target. Groups thus lose channels
where the hardware pays most for them and the gradient says they matter least, instead of
one global ratio. Every layer stays at the search precision (precisions are left to the
quantize technique). Each trial step it scores counts as one evaluated candidate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hadmc_core.hal.latency import LatencyModel
from hadmc_core.search.registry import register
from hadmc_core.search.space import (
    Budget,
    Plan,
    Problem,
    Shapes,
    estimate_ms,
    floor_of,
    params_of,
    round_channels,
)

if TYPE_CHECKING:
    from hadmc_core.prune import Group, Layer


@register("greedy")
def greedy(problem: Problem, target_ms: float, budget: Budget) -> Plan:
    """Channels to keep per group so the estimate is <= ``target_ms``."""
    pb, shapes = problem, problem.shapes
    keep = {g.root: round_channels(g.channels, pb.round_to, g.channels) for g in pb.groups}
    floor = {g.root: floor_of(g, pb.round_to, pb.min_keep) for g in pb.groups}
    current = pb.latency(keep)
    full_params = max(1, params_of(shapes, pb.full))
    while current > target_ms:
        best: tuple[float, str, int, float] | None = None
        for g in pb.groups:
            k = keep[g.root]
            step = min(pb.round_to, k - floor[g.root])
            if step <= 0:
                continue
            removed = g.channels - k
            cost = sum(g.scores[removed:removed + step])
            names = sorted(shapes.affects[g.root])
            before = pb.latency(keep, names=names)
            trial = {**keep, g.root: k - step}
            saved = before - pb.latency(trial, names=names)
            pb.evaluated += 1
            if saved <= 1e-9:
                continue
            saved_params = params_of(shapes, keep, names) - params_of(shapes, trial, names)
            benefit = saved / pb.full_ms + pb.size_weight * saved_params / full_params
            ratio = cost / benefit
            if best is None or ratio < best[0]:
                best = (ratio, g.root, k - step, saved)
        if best is None:
            break  # every group is at its floor
        keep[best[1]] = best[2]
        current -= best[3]
        pb.history.append((pb.latency(keep), pb.proxy(keep)))
    return pb.plan(keep, None, "greedy")


def allocate(groups: list[Group], layers: dict[str, Layer], lat: LatencyModel,
             target_fraction: float, precision: str, round_to: int = 8,
             min_keep: float = 0.1, uniform_ratio: float | None = None,
             size_weight: float = 1.0) -> Plan:
    """Greedy channels per group so the estimate is <= ``target_fraction`` of the full.

    A step's benefit is the latency it saves (fraction of the full model's) plus
    ``size_weight`` times the parameters it saves (fraction of the full model's), so a
    device that must also store and download the model gets a smaller one too.
    ``uniform_ratio`` prunes every group by that ratio instead (no search).
    """
    pb = Problem(groups, layers, lat, precision, round_to=round_to, min_keep=min_keep,
                 size_weight=size_weight)
    if uniform_ratio is not None:
        keep = {g.root: round_channels(g.channels * (1 - uniform_ratio), round_to, g.channels)
                for g in groups}
        return pb.plan(keep, None, "uniform")
    return greedy(pb, target_fraction * pb.full_ms, Budget())


def floor_fraction(groups: list[Group], layers: dict[str, Layer], lat: LatencyModel,
                   precision: str, round_to: int = 8, min_keep: float = 0.1) -> float:
    """Estimated latency with every group at its floor, as a fraction of the full model's:
    what pruning cannot remove (per-op overheads, layers with no prunable channels)."""
    shapes = Shapes(groups, layers)
    full = {g.root: g.channels for g in groups}
    floor = {g.root: floor_of(g, round_to, min_keep) for g in groups}
    total = estimate_ms(lat, shapes, full, precision)
    return estimate_ms(lat, shapes, floor, precision) / total if total > 0 else 0.0
