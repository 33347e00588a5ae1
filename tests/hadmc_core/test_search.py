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
