"""The ladder's unpruned rung: measured after the pruned rungs, outside ``max_candidates``,
so a run whose pruned candidates miss the accuracy limit returns the unpruned model's INT8
(what plain post-training quantization gives), or its FP32 export when every INT8 variant
misses too, never a candidate over the limit."""

from __future__ import annotations

import pytest

from hadmc_core.backends.onnxruntime import OnnxRuntimeBackend
from hadmc_core.compress import compress
from hadmc_core.config import PipelineConfig
from hadmc_core.hal import load_profile
from tests.hadmc_core.nets import FAST, ConvNet, trained

#: The first rung keeps a tenth of the removable latency and nothing recovers it (no
#: distillation): its candidates are far over a 5-point limit on digits.
HARSH = {**FAST, "prune": {"ladder": [0.1, 1.0], "calib_batches": 2},
         "distill": {"enabled": False}, "int4": {"enabled": False},
         "max_candidates": 1, "constraints": {"max_accuracy_drop": 5.0}}


@pytest.fixture(scope="module")
def convnet(digits):
    return trained(ConvNet(), digits, epochs=3)


def _by_rung(rep):
    cands = rep["candidates"]
    return ([c for c in cands if c["latency_fraction"] < 1.0],
            [c for c in cands if c["latency_fraction"] >= 1.0])


def test_pruning_over_the_limit_falls_back_to_the_unpruned_int8(convnet, digits, tmp_path):
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "o",
                   PipelineConfig.from_dict(HARSH)).report
    pruned, unpruned = _by_rung(rep)
    assert pruned and all(c["val_drop_upper"] > 5.0 for c in pruned), pruned
    chosen = next(c for c in rep["candidates"] if c["chosen"])
    assert rep["constraints"]["met"], rep["constraints"]["message"]
    assert chosen in unpruned and chosen["val_drop_upper"] <= 5.0
    assert chosen["id"].endswith("-q0")  # the whole unpruned model in INT8
    assert {r["precision"] for r in rep["layers"]} == {"int8"}
    assert all(r["out_channels"] == r["original_out_channels"] for r in rep["layers"])


def test_every_int8_variant_over_the_limit_gives_the_fp32_export(convnet, digits, tmp_path,
                                                                 monkeypatch):
    real = OnnxRuntimeBackend.quantize_int8

    def broken(self, fp32_path, out_path, calib_x, **kw):  # type: ignore[no-untyped-def]
        # activation ranges calibrated on near-zero inputs: every real input saturates
        return real(self, fp32_path, out_path, calib_x * 1e-4, **kw)

    monkeypatch.setattr(OnnxRuntimeBackend, "quantize_int8", broken)
    cfg = {**HARSH, "quantize": {**HARSH["quantize"], "keep_ladder": [0]}}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "o",
                   PipelineConfig.from_dict(cfg)).report
    _pruned, unpruned = _by_rung(rep)
    chosen = next(c for c in rep["candidates"] if c["chosen"])
    assert any(c["id"].endswith("-q0") and c["val_drop_upper"] > 5.0 for c in unpruned)
    assert rep["constraints"]["met"] and chosen["id"].endswith("-fp32") and chosen in unpruned
    assert any("unpruned FP32 export" in w for w in rep["warnings"])



def _halfway(rep, floor):
    """The pruned rungs the run tried, in order, and what halving towards ``floor`` from the
    first would give."""
    rungs = []
    for c in rep["candidates"]:
        if c["latency_fraction"] < 1.0 and c["latency_fraction"] not in rungs:
            rungs.append(c["latency_fraction"])
    expect = [rungs[0]]
    while len(expect) < len(rungs):
        expect.append(round(floor + (expect[-1] - floor) / 2, 4))
    return rungs, expect


def test_a_rung_met_with_room_to_spare_descends_halfway_to_the_floor(convnet, digits, tmp_path):
    # No recovery, so candidates fall far; descend_below 1 counts the whole 100-point
    # limit as room.
    cfg = {**FAST, "prune": {"ladder": [0.6, 1.0], "calib_batches": 2, "descend_below": 1.0},
           "distill": {"enabled": False}, "max_candidates": 3}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "o",
                   PipelineConfig.from_dict(cfg)).report
    floor = rep["ladder"]["floor_fraction"]
    rungs, expect = _halfway(rep, floor)
    assert rep["ladder"]["tried"] == [*rungs, 1.0]
    assert rep["ladder"]["descended"] == rungs[1:]
    # Room every time: three rungs, each halfway to the floor.
    assert len(rungs) == 3 and rungs == pytest.approx(expect, abs=1e-3), (rep["ladder"],
                                                                         rep["candidates"])
    assert rungs[0] > rungs[1] > rungs[2] > floor
    chosen = next(c for c in rep["candidates"] if c["chosen"])
    assert chosen["latency_ms"] == min(c["latency_ms"] for c in rep["candidates"])

    # Descent switched off: the first rung that meets the constraints ends the pruned ones.
    cfg["prune"] = {**cfg["prune"], "descend_below": 0.0}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "o2",
                   PipelineConfig.from_dict(cfg)).report
    assert len(_halfway(rep, floor)[0]) == 1 and rep["ladder"]["descended"] == []


def test_descent_needs_every_rung_so_far_to_have_met_the_limit_with_room():
    from types import SimpleNamespace

    from hadmc_core.pipeline import descend
    from hadmc_core.report import Candidate

    ctx = SimpleNamespace(cfg=PipelineConfig.from_dict({"constraints": {
        "max_accuracy_drop": 1.0}}), floor_fraction=0.25,
        baseline=SimpleNamespace(val_accuracy=90.0))

    def cand(upper):
        c = Candidate("c0-q0", 0.4, 0, 90.0, 1.0, 1000, 10, 10, 1.0)
        c.val_drop, c.val_drop_upper = upper - 0.3, upper
        return c

    assert descend(ctx, 0.45, cand(0.5)) == pytest.approx(0.35)
    assert descend(ctx, 0.45, cand(0.51)) is None          # less than half the limit left
    assert descend(ctx, 0.26, cand(0.1)) is None           # at the floor
    assert descend(ctx, 1.0, cand(0.1)) is None            # the unpruned rung


def _curve_ctx(curve, **cfg):
    from types import SimpleNamespace

    return SimpleNamespace(cfg=PipelineConfig.from_dict(
        {"prune": {"ladder": [0.2, 0.5, 1.0]}, **cfg}), floor_fraction=0.4,
        baseline=SimpleNamespace(val_accuracy=90.0, latency_ms=2.0), precision_ratio=1.0,
        ladder_curve=curve)


#: Measured ms of the structures planned at estimated fractions 0.4 (the floor) .. 1.0;
#: the 0.55 point is noise below its neighbour.
CURVE = [(0.4, 0.2), (0.5, 0.5), (0.55, 0.45), (0.7, 0.7), (1.0, 1.0)]


def test_a_measured_curve_places_rungs_at_fractions_of_the_measured_removable_latency():
    from hadmc_core.pipeline import descend, fraction_at, ladder, position
    from hadmc_core.report import Candidate

    ctx = _curve_ctx(CURVE)
    # Rung 0.2: 0.2 + 0.2 x (1.0 - 0.2) = 0.36 ms, between the probes at 0.4 and 0.5.
    assert ladder(ctx) == [pytest.approx(0.4533), pytest.approx(0.6), 1.0]
    assert position(ctx, 0.6) == pytest.approx(0.5)
    assert fraction_at(ctx, 0.0) == pytest.approx(0.4) and fraction_at(ctx, 1.0) == 1.0
    # By the estimate alone the same rungs sit much higher.
    assert ladder(_curve_ctx([])) == [pytest.approx(0.52), pytest.approx(0.7), 1.0]

    # Descent halves the measured removable latency: 0.6 keeps half, so a quarter next.
    c = Candidate("c0-q0", 0.6, 0, 90.0, 0.6, 1000, 10, 10, 0.6)
    c.val_drop, c.val_drop_upper = 0.0, 0.1
    assert descend(ctx, 0.6, c) == pytest.approx(0.4667, abs=1e-4)

    # A budget reads off the curve: 0.6 ms is the structure at 0.6.
    budget = _curve_ctx(CURVE, constraints={"latency_budget_ms": 0.6})
    assert ladder(budget) == [0.6, 1.0]
    # Pruning that measured no faster leaves the estimate in charge.
    flat = _curve_ctx([(0.4, 0.5), (0.7, 0.5), (1.0, 0.5)])
    assert ladder(flat) == ladder(_curve_ctx([]))


def test_the_ladder_is_placed_by_timing_the_searched_structures(convnet, digits, tmp_path):
    from types import SimpleNamespace

    from hadmc_core.pipeline import _curve, fraction_at

    cfg = {**FAST, "prune": {"ladder": [0.3, 1.0], "calib_batches": 2},
           "measure": {**FAST["measure"], "in_graph": True},
           "distill": {"enabled": False}, "int4": {"enabled": False}}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "o",
                   PipelineConfig.from_dict(cfg)).report
    lad = rep["ladder"]
    if 1 - lad["floor_fraction"] < 0.02:
        # The latency model may estimate that pruning this small a model removes nothing
        # (microseconds of overhead): then there is no curve to measure.
        assert lad["placement"] == "estimate" and lad["measured_ms"] == [], lad
        return
    fractions = [f for f, _ in lad["measured_ms"]]
    # The floor, four probes above it, the unpruned model last, each timed.
    assert len(fractions) == 6 and fractions[0] == lad["floor_fraction"] and fractions[-1] == 1.0
    assert fractions == sorted(fractions) and all(ms > 0 for _, ms in lad["measured_ms"])
    ctx = SimpleNamespace(floor_fraction=lad["floor_fraction"], ladder_curve=lad["measured_ms"])
    # A model this small may time no faster pruned (microseconds of overhead): then the
    # estimate places the rungs, and the report says which did.
    assert lad["placement"] == ("measured" if _curve(ctx) is not None else "estimate"), lad
    # (the report rounds the fractions to 4 decimals, the ms to 6)
    assert lad["rungs"][0] == pytest.approx(fraction_at(ctx, 0.3), abs=2e-3), lad
    assert rep["stages_seconds"]["ladder"] > 0
    assert not list((tmp_path / "o").rglob("ladder-*")), "the timed structures are removed"

    cfg["prune"] = {**cfg["prune"], "ladder_by": "estimate"}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "e",
                   PipelineConfig.from_dict(cfg)).report
    assert rep["ladder"]["placement"] == "estimate" and rep["ladder"]["measured_ms"] == []
    assert "ladder" not in rep["stages_seconds"]


def test_ladder_by_names_a_placement():
    from hadmc_core.errors import ConfigError

    with pytest.raises(ConfigError, match="prune.ladder_by: 'measured' or 'estimate'"):
        PipelineConfig.from_dict({"prune": {"ladder_by": "guess"}})


def test_next_rung_keeps_within_the_time_budget():
    from hadmc_core.pipeline import next_rung

    rungs = [0.3, 0.4, 0.6]
    # No budget, or no candidate yet to learn the cost from: the walk's pick.
    assert next_rung(rungs, 0.4, 500, 300, 200, None, True) == (0.4, None)
    assert next_rung(rungs, 0.4, 500, 0, 200, 1000, True) == (0.4, None)
    # Room for two more candidates: the pick.
    assert next_rung(rungs, 0.3, 100, 300, 200, 1300, True) == (0.3, None)
    # Room for one more after a miss: the mildest rung left, said why.
    rung, why = next_rung(rungs, 0.3, 400, 300, 200, 1000, True)
    assert rung == 0.6 and "one more candidate fits" in why
    # ... but after a rung that met the limits, the pick.
    assert next_rung(rungs, 0.3, 400, 300, 200, 1000, False) == (0.3, None)
    # No room: none, and why, in seconds.
    rung, why = next_rung(rungs, 0.3, 600, 300, 200, 1000, True)
    assert rung is None and "600 s spent" in why and "would pass 1000 s" in why
    assert next_rung([], 0.3, 0, 0, 0, 1000, False) == (None, None)


def _walk(order, holds, rungs=(0.2, 0.3, 0.45, 0.65)):
    """The rungs a walk tries when every rung from ``holds`` up meets the constraints."""
    from hadmc_core.pipeline import Walk

    walk, tried = Walk(list(rungs), order), []
    while walk.pending:
        r = walk.pick()
        tried.append(r)
        walk.met(r) if r >= holds else walk.missed(r)
    return tried, walk


def test_bisect_finds_the_deepest_rung_that_holds_in_fewer_candidates():
    # The middle rung (the milder of two middles) first, then halving.
    assert _walk("bisect", 0.45)[0] == [0.45, 0.3]
    assert _walk("bisect", 0.3)[0] == [0.45, 0.3, 0.2]
    assert _walk("bisect", 0.65)[0] == [0.45, 0.65]
    assert _walk("bisect", 0.9)[0] == [0.45, 0.65]        # none holds
    # Deepest first: one candidate per rung that misses.
    assert _walk("aggressive", 0.45)[0] == [0.2, 0.3, 0.45]
    assert _walk("aggressive", 0.9)[0] == [0.2, 0.3, 0.45, 0.65]
    # Descent may follow only when the deepest rung held and nothing missed.
    assert _walk("bisect", 0.1)[1].room_below()
    assert _walk("bisect", 0.2)[1].room_below()           # 0.45, 0.3 and 0.2 held
    assert not _walk("bisect", 0.3)[1].room_below()       # 0.2 missed
    assert _walk("aggressive", 0.2)[1].room_below()
    assert not _walk("aggressive", 0.3)[1].room_below()


def test_a_forced_rung_is_tried_next_and_the_walk_goes_on():
    from hadmc_core.pipeline import Walk

    walk = Walk([0.2, 0.3, 0.45, 0.65], "bisect")
    assert walk.pick() == 0.45
    walk.missed(0.45)              # accurate but slower than a latency budget
    walk.force(0.35)
    assert walk.pick() == 0.35 and walk.pending == [0.35, 0.65]
    walk.missed(0.35)
    assert walk.pick() == 0.65


def test_the_order_is_a_config_choice():
    from hadmc_core.errors import ConfigError

    assert PipelineConfig().prune.order == "bisect"
    with pytest.raises(ConfigError, match="prune.order: 'bisect' or 'aggressive'"):
        PipelineConfig.from_dict({"prune": {"order": "random"}})


def test_a_time_budget_stops_the_pruned_rungs_and_says_so(convnet, digits, tmp_path):
    cfg = {**HARSH, "prune": {**HARSH["prune"], "ladder": [0.1, 0.2, 0.3, 1.0],
                              "descend_below": 0.0},
           "max_candidates": 3, "constraints": {"max_accuracy_drop": 0.01}}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "free",
                   PipelineConfig.from_dict(cfg)).report
    # Without a budget, every pruned rung over the (tiny) limit is followed by the next.
    assert len(rep["ladder"]["tried"]) > 2 and "time_budget" not in rep["ladder"]

    cfg["constraints"] = {**cfg["constraints"], "time_budget_s": 0.001}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "o",
                   PipelineConfig.from_dict(cfg)).report
    # The first candidate (the middle rung) already passes the budget: the unpruned rung
    # comes next.
    assert rep["ladder"]["tried"] == [rep["ladder"]["rungs"][1], 1.0], rep["ladder"]
    assert rep["ladder"]["time_budget"][0].startswith("time budget: ")
    assert any(w.startswith("the ladder stopped early: time budget") for w in rep["warnings"])
    assert rep["config"]["constraints"]["time_budget_s"] == 0.001
