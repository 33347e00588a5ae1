"""What every search strategy searches: the plan type and the problem (channel choices per
group, precision choices per layer, the latency model's estimate and one accuracy proxy).

A plan keeps ``keep[group root]`` channels of each coupled group and runs each conv/linear
layer at ``precisions[layer]``. Its estimated latency is the latency model's sum over the
layers at their pruned widths and precisions. Its *proxy* estimates the loss it adds, in the
task's loss units:

- pruning: the first-order Taylor importance of the removed channels (the least important
  first, as pruning removes them), the scores ``prune.analyze`` computed, divided by the
  number of calibration batches their gradients were summed over;
- INT8: for each layer left in INT8, the output-distillation loss (KL divergence for
  classification) between the model with only that layer fake-quantized and the model,
  measured once on the unpruned model (``int8_sensitivity``); absent when the run does not
  choose precisions, and then the precision is the search precision for every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hadmc_core.hal.latency import LatencyModel

if TYPE_CHECKING:
    from hadmc_core.prune import Group, Layer

PRECISIONS = ("fp32", "int8")


@dataclass
class Plan:
    """A strategy's answer. ``precisions`` is None when the strategy did not choose them
    (every layer at the search precision; the quantize technique decides as before)."""

    keep: dict[str, int]
    estimated_ms: float
    full_ms: float
    precisions: dict[str, str] | None = None
    proxy: float = float("nan")
    strategy: str = "greedy"
    evaluated: int = 0                     # candidate plans the strategy evaluated
    seconds: float = 0.0


#: The greedy allocation's historic name.
Allocation = Plan


@dataclass
class Budget:
    """How much a strategy may search: ``trials`` candidate plans, ``seconds`` of wall
    time (None: no limit), whichever ends first. Greedy ignores both (it is deterministic
    and stops when the estimate meets the target)."""

    trials: int = 200
    seconds: float | None = None
    seed: int = 0


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


def floor_of(g: Group, round_to: int, min_keep: float) -> int:
    """Fewest channels a group may keep: ``min_keep`` of them, up to a whole multiple."""
    return min(g.channels, round_to * max(1, math.ceil(g.channels * min_keep / round_to)))


def round_channels(n: float, multiple: int, full: int) -> int:
    """Round a channel count down to the multiple (never to zero, never above full)."""
    if full <= multiple:
        return full
    return max(multiple, int(n // multiple) * multiple)


def channel_choices(g: Group, round_to: int, min_keep: float) -> list[int]:
    """Kept-channel counts a strategy may pick for ``g``: from its floor up to its full
    width rounded down to the multiple, in steps of the multiple, each rounded to whole
    convolution groups where the channels pass through a grouped convolution (as pruning
    applies them)."""
    lo = floor_of(g, round_to, min_keep)
    hi = max(lo, round_channels(g.channels, round_to, g.channels))
    return sorted({g.keepable(k) for k in range(lo, hi + 1, round_to)})


@dataclass
class Problem:
    """One search: the groups and layers of a model, the latency model, the precision the
    search plans at, the choices and the proxy. ``evaluate`` counts and records every
    candidate plan a strategy scores (``history``: estimated ms, proxy)."""

    groups: list[Group]
    layers: dict[str, Layer]
    lat: LatencyModel
    precision: str
    round_to: int = 8
    min_keep: float = 0.1
    size_weight: float = 1.0
    taylor_scale: float = 1.0              # 1 / calibration batches of the Taylor scores
    int8_sensitivity: dict[str, float] | None = None
    evaluated: int = 0
    history: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shapes = Shapes(self.groups, self.layers)
        self.order = list(self.layers)
        self.choices = {g.root: channel_choices(g, self.round_to, self.min_keep)
                        for g in self.groups}
        self.floor = {g.root: self.choices[g.root][0] for g in self.groups}
        self.full = {g.root: g.channels for g in self.groups}
        chooses = self.precision == "int8" and self.int8_sensitivity is not None
        #: precisions a strategy may give a layer (one: it chooses widths only)
        self.precision_choices: tuple[str, ...] = PRECISIONS if chooses else (self.precision,)
        self._cum: dict[str, list[float]] = {}
        for g in self.groups:
            acc, cum = 0.0, [0.0]
            for s in g.scores:
                acc += s * self.taylor_scale
                cum.append(acc)
            self._cum[g.root] = cum
        self._ms: dict[tuple[str, int, int, str], float] = {}
        self.full_ms = self.latency(self.full)

    @property
    def chooses_precision(self) -> bool:
        return len(self.precision_choices) > 1

    def layer_ms(self, lname: str, keep: dict[str, int], precision: str) -> float:
        cin, cout = self.shapes.dims(lname, keep)
        key = (lname, cin, cout, precision)
        ms = self._ms.get(key)
        if ms is None:
            layer = self.layers[lname]
            ms = self._ms[key] = self.lat.layer_ms(layer.geom, cin, cout, precision,
                                                   ref=(layer.cin, layer.cout))
        return ms

    def latency(self, keep: dict[str, int], precisions: dict[str, str] | None = None,
                names: list[str] | None = None) -> float:
        """Estimated ms of the plan (of ``names`` only, when given)."""
        p = precisions or {}
        return sum(self.layer_ms(n, keep, p.get(n, self.precision))
                   for n in (names if names is not None else self.order))

    def proxy(self, keep: dict[str, int], precisions: dict[str, str] | None = None) -> float:
        """Estimated loss the plan adds (module doc)."""
        cost = sum(self._cum[g.root][g.channels - keep[g.root]] for g in self.groups)
        if self.int8_sensitivity is not None:
            p = precisions or {}
            cost += sum(s for n, s in self.int8_sensitivity.items()
                        if p.get(n, self.precision) == "int8")
        return cost

    def evaluate(self, keep: dict[str, int],
                 precisions: dict[str, str] | None = None) -> tuple[float, float]:
        """(estimated ms, proxy) of one candidate plan, counted and recorded."""
        ms, px = self.latency(keep, precisions), self.proxy(keep, precisions)
        self.evaluated += 1
        self.history.append((ms, px))
        return ms, px

    def plan(self, keep: dict[str, int], precisions: dict[str, str] | None,
             strategy: str) -> Plan:
        return Plan(dict(keep), self.latency(keep, precisions), self.full_ms,
                    dict(precisions) if precisions is not None else None,
                    self.proxy(keep, precisions), strategy, self.evaluated)

    def worst_proxy(self) -> float:
        """Proxy of the smallest plan (every group at its floor, every layer INT8 when
        precisions are chosen): a scale for rewards and hypervolumes."""
        return self.proxy(self.floor, {n: "int8" for n in self.order}
                          if self.chooses_precision else None)
