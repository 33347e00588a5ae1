"""Hardware-aware allocation of per-group channel counts under a latency target.

Greedy marginal search: start from the full model and repeatedly remove ``round_to``
channels from the group whose removal costs the least importance per millisecond
saved, as the latency model estimates it for the target hardware, until the estimate
meets the target. Groups thus lose channels where the hardware pays most for them
and the gradient says they matter least, instead of one global ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hadmc_core.hal.latency import LatencyModel
from hadmc_core.prune import Group, Layer


@dataclass
class Allocation:
    keep: dict[str, int]
    estimated_ms: float
    full_ms: float


class Shapes:
    """Channel counts of each layer as a function of the groups' kept channels."""

    def __init__(self, groups: list[Group], layers: dict[str, Layer]) -> None:
        self.groups = {g.root: g for g in groups}
        self.layers = layers
        self.by_layer: dict[str, list[tuple[str, str, int]]] = {n: [] for n in layers}
        for g in groups:
            for lname, n in g.outs.items():
                self.by_layer[lname].append((g.root, "out", n))
            for lname, n in g.ins.items():
                self.by_layer[lname].append((g.root, "in", n))
        self.affects: dict[str, set[str]] = {g.root: set(g.outs) | set(g.ins) for g in groups}

    def dims(self, lname: str, keep: dict[str, int]) -> tuple[int, int]:
        layer = self.layers[lname]
        cin, cout = layer.cin, layer.cout
        for root, side, n in self.by_layer[lname]:
            g = self.groups[root]
            removed = round(n * (g.channels - keep[root]) / g.channels)
            if side == "out":
                cout -= removed
            else:
                cin -= removed
        if layer.geom.kind == "dwconv":
            cin = cout = min(cin, cout)
        return max(1, cin), max(1, cout)


def estimate_ms(lat: LatencyModel, shapes: Shapes, keep: dict[str, int],
                precision: str, names: list[str] | None = None) -> float:
    total = 0.0
    for lname in names if names is not None else shapes.layers:
        layer = shapes.layers[lname]
        cin, cout = shapes.dims(lname, keep)
        total += lat.layer_ms(layer.geom, cin, cout, precision, ref=(layer.cin, layer.cout))
    return total


def params_of(shapes: Shapes, keep: dict[str, int], names: list[str] | None = None) -> int:
    total = 0
    for lname in names if names is not None else shapes.layers:
        cin, cout = shapes.dims(lname, keep)
        total += shapes.layers[lname].geom.params(cin, cout)
    return total


def allocate(groups: list[Group], layers: dict[str, Layer], lat: LatencyModel,
             target_fraction: float, precision: str, round_to: int = 8,
             min_keep: float = 0.1, uniform_ratio: float | None = None,
             size_weight: float = 1.0) -> Allocation:
    """Channels to keep per group so the estimate is <= ``target_fraction`` of the full.

    A step's benefit is the latency it saves (fraction of the full model's) plus
    ``size_weight`` times the parameters it saves (fraction of the full model's), so a
    device that must also store and download the model gets a smaller one too.
    """
    shapes = Shapes(groups, layers)
    full = {g.root: g.channels for g in groups}
    full_ms = estimate_ms(lat, shapes, full, precision)
    if uniform_ratio is not None:
        keep = {g.root: round_channels(g.channels * (1 - uniform_ratio), round_to, g.channels)
                for g in groups}
        return Allocation(keep, estimate_ms(lat, shapes, keep, precision), full_ms)
    keep = {g.root: round_channels(g.channels, round_to, g.channels) for g in groups}
    floor = {g.root: _floor(g, round_to, min_keep) for g in groups}
    current = estimate_ms(lat, shapes, keep, precision)
    full_params = max(1, params_of(shapes, full))
    target = target_fraction * full_ms
    while current > target:
        best: tuple[float, str, int, float] | None = None
        for g in groups:
            k = keep[g.root]
            step = min(round_to, k - floor[g.root])
            if step <= 0:
                continue
            removed = g.channels - k
            cost = sum(g.scores[removed:removed + step])
            names = sorted(shapes.affects[g.root])
            before = estimate_ms(lat, shapes, keep, precision, names)
            trial = {**keep, g.root: k - step}
            saved = before - estimate_ms(lat, shapes, trial, precision, names)
            if saved <= 1e-9:
                continue
            saved_params = params_of(shapes, keep, names) - params_of(shapes, trial, names)
            benefit = saved / full_ms + size_weight * saved_params / full_params
            ratio = cost / benefit
            if best is None or ratio < best[0]:
                best = (ratio, g.root, k - step, saved)
        if best is None:
            break  # every group is at its floor
        keep[best[1]] = best[2]
        current -= best[3]
    return Allocation(keep, estimate_ms(lat, shapes, keep, precision), full_ms)


def floor_fraction(groups: list[Group], layers: dict[str, Layer], lat: LatencyModel,
                   precision: str, round_to: int = 8, min_keep: float = 0.1) -> float:
    """Estimated latency with every group at its floor, as a fraction of the full model's:
    what pruning cannot remove (per-op overheads, layers with no prunable channels)."""
    shapes = Shapes(groups, layers)
    full = {g.root: g.channels for g in groups}
    floor = {g.root: _floor(g, round_to, min_keep) for g in groups}
    total = estimate_ms(lat, shapes, full, precision)
    return estimate_ms(lat, shapes, floor, precision) / total if total > 0 else 0.0


def _floor(g: Group, round_to: int, min_keep: float) -> int:
    """Fewest channels a group may keep: ``min_keep`` of them, up to a whole multiple."""
    return min(g.channels, round_to * max(1, math.ceil(g.channels * min_keep / round_to)))


def round_channels(n: float, multiple: int, full: int) -> int:
    """Round a channel count down to the multiple (never to zero, never above full)."""
    if full <= multiple:
        return full
    return max(multiple, int(n // multiple) * multiple)
