import numpy as np
import pytest
import torch

from hadmc_core import prune, search
from hadmc_core.config import PruneConfig
from hadmc_core.data import Split
from hadmc_core.hal import load_profile
from hadmc_core.hal.latency import LatencyModel
from hadmc_core.models import ArchSpec, build_model


@pytest.fixture(scope="module")
def analysed():
    """A 28x28 model, where compute (not per-op overhead) dominates on these profiles."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = Split(rng.standard_normal((128, 1, 28, 28)).astype(np.float32),
                 rng.integers(0, 10, 128))
    model = build_model(ArchSpec("resnet18", 1, 10, "small", width=0.5)).eval()
    example = torch.from_numpy(data.x[:2])
    groups, layers = prune.analyze(model, data, PruneConfig(calib_batches=2), example)
    return model, example, groups, layers


@pytest.mark.parametrize("fraction", [0.4, 0.6, 0.8])
@pytest.mark.parametrize("profile", ["arm64-generic", "x86-avx2"])
def test_search_meets_latency_target_on_the_model(analysed, fraction, profile):
    model, example, groups, layers = analysed
    lat = LatencyModel(load_profile(profile), measure=False)
    alloc = search.allocate(groups, layers, lat, fraction, "int8", round_to=8)
    assert alloc.estimated_ms <= fraction * alloc.full_ms + 1e-9
    assert all(k % 8 == 0 or k == g.channels for g in groups for k in [alloc.keep[g.root]])
    # Not one global ratio: groups keep different fractions of their channels.
    kept = {round(alloc.keep[g.root] / g.channels, 2) for g in groups}
    assert len(kept) > 1
    pruned = prune.apply(model, groups, alloc.keep, example)
    assert pruned(example).shape == (2, 10)


def test_measured_latency_model_fits_this_machine(analysed, tmp_path):
    _model, _example, _groups, layers = analysed
    lat = LatencyModel(load_profile("x86-avx2"), measure=True, cache_dir=tmp_path)
    layer = layers["layer1.0.conv1"]
    full = lat.layer_ms(layer.geom, layer.cin, layer.cout, "fp32")
    quarter = lat.layer_ms(layer.geom, layer.cin // 4, layer.cout // 4, "fp32")
    assert 0 < quarter < full
    assert list(tmp_path.glob("latency-*.json")), "the table is cached on disk"
    # A device's own table overrides the measurement.
    key = f"{layer.geom.key}|fp32"
    dev = LatencyModel(load_profile("x86-avx2"), table={key: [1.0, 0.0]})
    assert dev.layer_ms(layer.geom, layer.cin, layer.cout, "fp32") == 1.0
    assert dev.source == "device-table"


def test_impossible_target_stops_at_the_floor(analysed):
    _model, _example, groups, layers = analysed
    lat = LatencyModel(load_profile("jetson-orin"), measure=False)
    alloc = search.allocate(groups, layers, lat, 0.0001, "int8", round_to=8, min_keep=0.25)
    assert alloc.estimated_ms > 0.0001 * alloc.full_ms
    assert all(alloc.keep[g.root] >= min(g.channels, 8) for g in groups)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_in_graph_fit_predicts_the_whole_model(analysed, precision, tmp_path):
    """Fitted to per-layer times inside whole models, the estimate of a pruned model
    (not one of the widths it was fitted on) is close to that model's measured latency.
    (Layers timed alone summed to 5x the whole INT8 model: see hadmc_core/calibrate.py.)"""
    from hadmc_core import calibrate, quantize
    from hadmc_core.config import QuantizeConfig
    from hadmc_core.fuse import fold_batchnorm
    from hadmc_core.onnx_io import export_onnx, measure_latency

    model, example, groups, layers = analysed
    rng = np.random.default_rng(1)
    calib = Split(rng.standard_normal((64, 1, 28, 28)).astype(np.float32), np.zeros(64, int))
    lat = LatencyModel(load_profile("x86-avx2"), measure=True, cache_dir=tmp_path)
    assert calibrate.fit_latency(lat, model, groups, example, calib, [precision], False,
                                 tmp_path, round_to=8) > 0
    assert lat.source == "measured-onnxruntime-in-graph"
    alloc = search.allocate(groups, layers, lat, 0.5, precision, round_to=8)
    pruned = fold_batchnorm(prune.apply(model, groups, alloc.keep, example), example).model
    path = export_onnx(pruned, example, tmp_path / "p.onnx")
    if precision == "int8":
        path = quantize.quantize_qdq(path, tmp_path / "q.onnx", calib,
                                     QuantizeConfig(calib_samples=64), False)
    measured = measure_latency(path, tuple(example.shape), runs=100).median_ms
    # The fit and the check are timed minutes apart on two shared cores: a load that comes
    # or goes in between moves one side (seen: estimate 1.6x measured). The bound still
    # refuses the 5x error of single-layer timings that this guards against (seen in a
    # full test run on a quiet machine: INT8 estimate 2.02x measured).
    assert 0.4 * measured <= alloc.estimated_ms <= 3.0 * measured, (alloc.estimated_ms, measured)


def test_floor_fraction_is_what_pruning_cannot_remove(analysed):
    _model, _example, groups, layers = analysed
    lat = LatencyModel(load_profile("x86-avx2"), measure=False)
    floor = search.floor_fraction(groups, layers, lat, "int8", round_to=8, min_keep=0.25)
    assert 0 < floor < 1
    # Asking for exactly the floor prunes every group to its minimum, a multiple of 8.
    alloc = search.allocate(groups, layers, lat, floor, "int8", round_to=8, min_keep=0.25)
    for g in groups:
        assert alloc.keep[g.root] == min(g.channels, 8 * -(-g.channels // 32)), g.root
    assert alloc.estimated_ms == pytest.approx(floor * alloc.full_ms)


def test_ladder_rungs_are_fractions_of_the_removable_latency():
    from types import SimpleNamespace

    from hadmc_core import pipeline
    from hadmc_core.config import PipelineConfig

    cfg = PipelineConfig.from_dict({"prune": {"ladder": [0.0, 0.5, 1.0]}})
    ctx = SimpleNamespace(cfg=cfg, floor_fraction=0.4, baseline=None, precision_ratio=1.0)
    assert pipeline.ladder(ctx) == [0.4, 0.7, 1.0]
