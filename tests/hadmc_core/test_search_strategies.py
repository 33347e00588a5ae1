"""Search strategies (greedy, evolution, rl): each respects a latency target on the latency
model and returns a valid plan; a strategy's precisions are what the quantize technique
builds first."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hadmc_core import prune, search
from hadmc_core.config import PruneConfig
from hadmc_core.data import Split
from hadmc_core.hal import load_profile
from hadmc_core.hal.latency import LatencyModel
from hadmc_core.models import ArchSpec, build_model

STRATEGIES = ["greedy", "evolution", "rl"]


@pytest.fixture(scope="module")
def analysed():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = Split(rng.standard_normal((64, 1, 28, 28)).astype(np.float32),
                 rng.integers(0, 10, 64))
    model = build_model(ArchSpec("resnet18", 1, 10, "small", width=0.25)).eval()
    example = torch.from_numpy(data.x[:2])
    groups, layers = prune.analyze(model, data, PruneConfig(calib_batches=1, batch_size=32),
                                   example)
    # Per-layer INT8 sensitivities: the head and the first layer touchy, the rest less so.
    sens = {n: (5e-3 if i in (0, len(layers) - 1) else 1e-4 * (i % 3))
            for i, n in enumerate(layers)}
    return model, example, groups, layers, sens


def test_registry_names_and_unknown_name():
    from hadmc_core.config import PruneConfig
    from hadmc_core.errors import ConfigError, UnknownNameError

    assert set(STRATEGIES) <= set(search.names())
    with pytest.raises(UnknownNameError, match="search strategy 'annealing'"):
        search.get("annealing")
    with pytest.raises(ConfigError, match="prune.search: one of evolution, greedy, rl"):
        PruneConfig.from_dict({"search": "annealing"})


@pytest.mark.parametrize("rung", [0.3, 0.7])
@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_meets_the_target_with_a_valid_plan(analysed, name, rung):
    model, example, groups, layers, sens = analysed
    lat = LatencyModel(load_profile("x86-avx512-vnni"), measure=False)
    pb = search.Problem(groups, layers, lat, "int8", round_to=8, min_keep=0.25,
                        int8_sensitivity=sens)
    floor_ms = pb.latency(pb.floor)
    target = floor_ms + rung * (pb.full_ms - floor_ms)  # as the ladder asks
    plan = search.run(name, pb, target, search.Budget(trials=24, seed=1))
    assert plan.strategy == name and plan.full_ms == pytest.approx(pb.full_ms)
    assert plan.estimated_ms <= target + 1e-9
    assert plan.estimated_ms == pytest.approx(pb.latency(plan.keep, plan.precisions))
    assert plan.proxy == pytest.approx(pb.proxy(plan.keep, plan.precisions))
    assert plan.evaluated >= 1
    if name != "greedy":
        assert plan.evaluated <= 24
    for g in groups:
        k = plan.keep[g.root]
        assert min(g.channels, 8) <= k <= g.channels and k in pb.choices[g.root], g.root
    if name == "greedy":
        assert plan.precisions is None  # left to the quantize technique
    else:
        assert plan.precisions is not None and set(plan.precisions) == set(layers)
        assert set(plan.precisions.values()) <= {"fp32", "int8"}
    pruned = prune.apply(model, groups, plan.keep, example)
    assert pruned(example).shape == (2, 10)


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_widths_only_without_int8_sensitivity(analysed, name):
    _model, _example, groups, layers, _sens = analysed
    lat = LatencyModel(load_profile("arm64-generic"), measure=False)
    pb = search.Problem(groups, layers, lat, "fp32", round_to=8)
    assert not pb.chooses_precision
    plan = search.run(name, pb, 0.6 * pb.full_ms, search.Budget(trials=16))
    assert plan.precisions is None and plan.estimated_ms <= 0.6 * pb.full_ms + 1e-9


@pytest.mark.parametrize("name", ["evolution", "rl"])
def test_unreachable_target_returns_the_smallest_plan(analysed, name):
    _model, _example, groups, layers, sens = analysed
    lat = LatencyModel(load_profile("jetson-orin"), measure=False)
    pb = search.Problem(groups, layers, lat, "int8", round_to=8, int8_sensitivity=sens)
    plan = search.run(name, pb, 1e-6, search.Budget(trials=16))
    floor_ms = pb.latency(pb.floor, {n: "int8" for n in layers})
    assert plan.estimated_ms == pytest.approx(floor_ms)


def test_greedy_strategy_is_the_allocation(analysed):
    """The registered greedy strategy and ``allocate`` (today's callers) agree."""
    _model, _example, groups, layers, _sens = analysed
    lat = LatencyModel(load_profile("x86-avx2"), measure=False)
    alloc = search.allocate(groups, layers, lat, 0.5, "int8", round_to=8)
    pb = search.Problem(groups, layers, lat, "int8", round_to=8)
    plan = search.run("greedy", pb, 0.5 * pb.full_ms)
    assert plan.keep == alloc.keep and plan.estimated_ms == pytest.approx(alloc.estimated_ms)
