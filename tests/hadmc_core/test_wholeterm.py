"""A device's whole-model term (``hadmc_core.hal.wholeterm``): calibration networks built
from its operator classes, as the pipeline reads them, run by each runtime; the fit; and
the term in the latency model's and the measurer's whole-model estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.optable import OPERATORS, operator_table
from hadmc_core import backends, graph_stats
from hadmc_core.hal import load_profile
from hadmc_core.hal import wholeterm as wt
from hadmc_core.hal.latency import LatencyModel, LayerGeom
from hadmc_core.measure import Measurer

SMALL = [(LayerGeom("conv", 3, 1, 8, 8), 8, 8), (LayerGeom("conv", 3, 2, 8, 8), 8, 16),
         (LayerGeom("conv", 1, 1, 4, 4), 16, 16), (LayerGeom("linear"), 16, 10)]


def test_chains_connect_every_operator_class_in_order() -> None:
    built = wt.chains(OPERATORS)
    used = {g.key for ch in built for g, _, _ in ch.layers()}
    assert used == {g.key for g, _, _ in OPERATORS}
    for ch in built:
        c, h, w = ch.input_shape
        for step in ch.steps:
            if step[0] in ("layer", "block"):
                geom, cin, cout = step[1], step[2], step[3]
                if geom.kind != "linear":
                    assert (cin, geom.h, geom.w) == (c, h, w), (ch, step)
                    h, w = geom.out_hw
                c = cout
            elif step[0] == "pool":
                h, w = h // step[1], w // step[1]
    assert built[-1].steps[-1] == ("layer", LayerGeom("linear"), 128, 100)
    assert [s[2] for s in wt.chains(OPERATORS, 0.25)[0].steps if s[0] == "block"] == [16]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_pipeline_reads_a_chain_as_its_layers(precision: str, tmp_path: Path) -> None:
    """graph_stats (what estimates a candidate) finds the chain's weight layers with the
    geometry and widths the fit sums the table over; the model is valid ONNX."""
    onnx = pytest.importorskip("onnx")
    (chain,) = wt.chains(SMALL)
    path = tmp_path / "chain.onnx"
    path.write_bytes(wt.chain_onnx(chain, precision))
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    if precision == "fp32":
        found = [(ly.geom, ly.cin, ly.cout) for ly in graph_stats.layers(path).values()]
        assert found == chain.layers()
        assert len(found) == 6  # two residual blocks (two layers each), two single layers


@pytest.mark.parametrize("name", [n for n in ("onnxruntime", "openvino")
                                  if backends.get(n).available()])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_each_runtime_runs_the_chains(name: str, precision: str) -> None:
    backend = backends.get(name)
    for chain in wt.chains(SMALL, 0.5):
        sess = backend.open(wt.chain_onnx(chain, precision), 1, batch=1)
        x = np.random.default_rng(0).standard_normal((1, *chain.input_shape)).astype(
            np.float32)
        (y,) = sess.run({"x": x})
        assert y.shape == (1, 5) and np.isfinite(y).all()
        assert wt.time_chain(chain, precision, 1, backend, runs=3, warmup=1) > 0


def test_fit_recovers_the_term_and_shrugs_off_a_stretched_timing() -> None:
    c, k, j = 0.05, 1.3, 0.25
    rng = np.random.default_rng(3)
    pts = [(f, s, c + k * s + j * f) for f, s in rng.uniform(0.05, 2.0, (9, 2))]
    fixed, slope, whole = pts[4]
    pts[4] = (fixed, slope, 3 * whole)  # a busy moment
    assert wt.fit_term(pts) == pytest.approx([c, k, j], rel=1e-3, abs=1e-5)


def test_fit_keeps_every_coefficient_non_negative() -> None:
    """Whole models that cost less than their layers' MAC parts, at no constant: the best
    fit under c, k, j >= 0."""
    pts = [(0.1, 1.0, 0.3), (0.2, 2.0, 0.5), (0.3, 3.0, 0.7), (0.1, 0.5, 0.12)]
    term = wt.fit_term(pts)
    assert min(term) >= 0 and len(term) == 3
    pred = [term[0] + term[1] * s + term[2] * f for f, s, _ in pts]
    assert np.median([abs(p - w) / w for p, (_, _, w) in zip(pred, pts, strict=True)]) < 0.2


def test_the_agents_table_carries_the_term_and_the_model_uses_it() -> None:
    table = operator_table(1, SMALL)
    assert set(table) == {f"{g.key}|{p}" for g, _, _ in SMALL for p in ("fp32", "int8")} | {
        "model|fp32", "model|int8"}
    for p in ("fp32", "int8"):
        assert len(table[f"model|{p}"]) == 3 and min(table[f"model|{p}"]) >= 0
    lat = LatencyModel(load_profile("x86-avx2"), table=table)
    assert lat.source == "device-table+whole-model-term"
    assert "model|fp32" not in lat.device_table and set(lat.overhead) == {"fp32", "int8"}
    plain = operator_table(1, SMALL[:1], precisions=("fp32",), whole_term=False)
    assert list(plain) == [f"{SMALL[0][0].key}|fp32"]
    assert LatencyModel(load_profile("x86-avx2"), table=plain).source == "device-table"


def test_model_ms_applies_a_device_term_to_both_parts(tmp_path: Path) -> None:
    (chain,) = wt.chains(SMALL[:2])
    path = tmp_path / "m.onnx"
    path.write_bytes(wt.chain_onnx(chain, "fp32"))
    table = {f"{g.key}|fp32": [0.1, 0.5] for g, _, _ in SMALL[:2]}
    fixed, slope = wt.table_parts(table, chain.layers(), "fp32")
    assert fixed == pytest.approx(0.3)  # three layers' constants
    lat = LatencyModel(load_profile("x86-avx2"), table=table)
    graph = graph_stats.layers(path)
    assert graph_stats.model_ms(lat, graph, {}) == pytest.approx(fixed + slope)
    lat = LatencyModel(load_profile("x86-avx2"), table={**table, "model|fp32": [0.2, 2.0, 0.5]})
    want = 0.2 + 2.0 * slope + 0.5 * fixed
    assert graph_stats.model_ms(lat, graph, {}) == pytest.approx(want)
    assert graph_stats.estimate_ms(lat, graph, {}) == pytest.approx(fixed + slope)
    # the pipeline's estimate of a candidate's latency (device_table source) is the whole
    m = Measurer(backend=backends.get("onnxruntime"), task=None, lat=lat,  # type: ignore[arg-type]
                 cfg=None, input_shape=chain.input_shape, source="device_table")  # type: ignore[arg-type]
    assert m.estimate_ms(path, {}) == pytest.approx(want)


def test_a_job_for_a_device_reports_the_whole_model_estimate(digits, tmp_path: Path) -> None:
    """compress() with a device table that carries a term: the report names the model,
    and every estimate goes through the term (here [1 ms, 1, 1]: the layer sum plus 1 ms
    at FP32, so the baseline is exactly 1 ms above the same table's without it)."""
    from hadmc_core.compress import compress
    from hadmc_core.config import PipelineConfig
    from tests.hadmc_core.nets import FAST, ConvNet, trained

    quick = PipelineConfig.from_dict({**FAST, "prune": {"enabled": False},
                                      "distill": {"enabled": False},
                                      "quantize": {"keep_ladder": [1], "calib_samples": 64,
                                                   "sensitivity_samples": 32}})
    net = trained(ConvNet(), digits, epochs=1)
    prof = load_profile("x86-avx2")
    table = {"conv-k3-s1-8x8|fp32": [0.5, 0.0], "conv-k3-s1-8x8|int8": [0.25, 0.0]}
    plain = compress(net, digits, prof, tmp_path / "a", quick, device_table=table).report
    term = {**table, "model|fp32": [1.0, 1.0, 1.0], "model|int8": [1.0, 1.0, 1.0]}
    rep = compress(net, digits, prof, tmp_path / "b", quick, device_table=term).report
    assert plain["latency_model"] == "device-table"
    assert rep["latency_source"] == "device_table"
    assert rep["latency_model"] == "device-table+whole-model-term"
    assert rep["baseline"]["latency_ms"] == pytest.approx(
        plain["baseline"]["latency_ms"] + 1.0, abs=1e-6)


def test_a_stem_gets_a_stage_at_its_output_width() -> None:
    """A stride-1 class seen first with other widths (a stem: 1 -> 64) is a layer that
    changes the width and then a residual block at 64, as the stage after a stem is."""
    (chain,) = wt.chains([(LayerGeom("conv", 3, 1, 28, 28), 1, 64)])
    geom = LayerGeom("conv", 3, 1, 28, 28)
    assert chain.steps == [("layer", geom, 1, 64), ("block", geom, 64, 64), ("gap",)]
    assert chain.layers() == [(geom, 1, 64), (geom, 64, 64), (geom, 64, 64)]
