"""Backends: each runtime opens, runs, times, profiles and quantizes a real (small, trained)
model; the registry picks a profile's runtime; the one timing loop counts what it says."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hadmc_core import backends
from hadmc_core.backends import Backend, Timing, time_runs
from hadmc_core.errors import ConfigError, UnknownNameError
from hadmc_core.hal.profile import load_profile
from hadmc_core.onnx_io import export_onnx, measure_latency, onnx_accuracy, weight_layers
from tests.hadmc_core.nets import ConvNet, trained

NAMES = [pytest.param(n, id=n, marks=pytest.mark.skipif(
    not backends.get(n).available(), reason=f"{n} is not installed")) for n in backends.names()]
KEEP = "/body/body.3/Conv"


@pytest.fixture(scope="module")
def convnet(digits, tmp_path_factory):
    """ConvNet trained on digits (8x8), exported to ONNX: (torch model, FP32 path)."""
    model = trained(ConvNet(), digits, epochs=3)
    path = tmp_path_factory.mktemp("backends") / "convnet.onnx"
    return model, export_onnx(model, torch.from_numpy(digits.val.x[:2]), path)


@pytest.fixture(scope="module")
def int8(convnet, digits, tmp_path_factory):
    """Per backend: (INT8 artifact, INT8 artifact with KEEP left in FP32)."""
    _, fp32 = convnet
    out = {}
    root = tmp_path_factory.mktemp("int8")
    for name in backends.names():
        b = backends.get(name)
        if b.available():
            calib = digits.train.x[:128]
            out[name] = (b.quantize_int8(fp32, root / f"{name}.onnx", calib),
                         b.quantize_int8(fp32, root / f"{name}-keep.onnx", calib,
                                         keep_fp32=[KEEP]))
    return out


def _graph(path: Path):
    import onnx

    return onnx.load(str(path)).graph


def _weight_is_dequantized(path: Path) -> dict[str, bool]:
    """Per Conv node: whether its weight comes out of a DequantizeLinear (INT8)."""
    g = _graph(path)
    producer = {o: n for n in g.node for o in n.output}
    return {n.name: getattr(producer.get(n.input[1]), "op_type", None) == "DequantizeLinear"
            for n in g.node if n.op_type == "Conv"}


@pytest.mark.parametrize("name", NAMES)
def test_open_describes_and_runs_the_model(name, convnet, digits):
    model, fp32 = convnet
    sess = backends.get(name).open(fp32, threads=1)
    assert sess.input_names == ["input"] and sess.output_names == ["logits"]
    assert sess.input_shapes == [(None, 1, 8, 8)]
    assert sess.input_dtypes == [np.dtype(np.float32)]
    x = digits.val.x[:5]
    out = sess.run({"input": x})
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert len(out) == 1 and out[0].shape == (5, 10)
    np.testing.assert_allclose(out[0], want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_time_model_at_batch_one(name, convnet):
    _, fp32 = convnet
    b = backends.get(name)
    for shape in [(1, 1, 8, 8), (1, 8, 8), (4, 1, 8, 8)]:  # with or without the batch dim
        t = b.time_model(fp32, shape, runs=12, warmup=2, threads=1)
        assert isinstance(t, Timing) and t.runs == 12 and len(t.samples) == 12
        assert t.threads == 1
        assert 0 < min(t.samples) <= t.median_ms <= t.p90_ms <= t.p95_ms <= max(t.samples)
        assert t.median_ms < 1000


@pytest.mark.parametrize("name", NAMES)
def test_predict_concatenates_batches(name, convnet, digits):
    _, fp32 = convnet
    b = backends.get(name)
    whole = b.predict(fp32, digits.val.x)
    parts = b.predict(fp32, digits.val.x, batch_size=7)
    assert whole[0].shape == (len(digits.val), 10)
    np.testing.assert_allclose(parts[0], whole[0], atol=1e-5)
    acc = 100.0 * (whole[0].argmax(1) == digits.val.y).mean()
    assert acc == pytest.approx(onnx_accuracy(fp32, digits.val, backend=name))
    assert acc > 80


@pytest.mark.parametrize("name", NAMES)
def test_int8_is_qdq_onnx_close_to_fp32(name, convnet, int8, digits):
    _, fp32 = convnet
    b = backends.get(name)
    q, _ = int8[name]
    assert b.artifact_format == "onnx-qdq"
    ops = {n.op_type for n in _graph(q).node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert all(_weight_is_dequantized(q).values())
    assert q.stat().st_size < 0.6 * fp32.stat().st_size  # INT8 weight initializers
    ref, got = b.predict(fp32, digits.test.x)[0], b.predict(q, digits.test.x)[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.98
    assert (ref.argmax(1) == got.argmax(1)).mean() > 0.9


@pytest.mark.parametrize("name", NAMES)
def test_keep_fp32_layers_stay_float(name, int8, digits):
    q, mixed = int8[name]
    dq = _weight_is_dequantized(mixed)
    assert dq.pop(KEEP) is False
    assert all(dq.values())
    if name == "openvino":  # and the runtime really runs it in FP32, the rest in INT8
        ran = backends.get(name).executed_precisions(mixed, threads=1)
        assert ran[KEEP] == "fp32"
        assert {p for n, p in ran.items() if n != KEEP} == {"int8"}
    out = backends.get(name).predict(mixed, digits.val.x)[0]
    assert out.shape == (len(digits.val), 10) and np.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_profile_nodes_names_onnx_weight_nodes(name, convnet, int8):
    _, fp32 = convnet
    b = backends.get(name)
    weights = {n for n, _ in weight_layers(fp32)}
    for path in (fp32, int8[name][0]):
        try:
            times = b.profile_nodes(path, threads=1, runs=10, warmup=2)
        except NotImplementedError:
            pytest.skip(f"{name} has no per-node profiler")
        assert set(times) == weights, path.name
        assert all(0 < ms < 100 for ms in times.values())


def test_openvino_runs_onnxruntime_int8_artifact(int8, digits):
    """The artifact format is shared: ONNX Runtime's QDQ file runs on OpenVINO in INT8."""
    ov = backends.get("openvino")
    if not ov.available():
        pytest.skip("openvino is not installed")
    q = int8["onnxruntime"][0]
    ort_out = backends.get("onnxruntime").predict(q, digits.val.x)[0]
    ov_out = ov.predict(q, digits.val.x)[0]
    assert (ort_out.argmax(1) == ov_out.argmax(1)).mean() > 0.95
    assert set(ov.executed_precisions(q, threads=1).values()) == {"int8"}


@pytest.mark.parametrize("name", NAMES)
def test_executes_as(name):
    b = backends.get(name)
    assert b.executes_as("int8") == "int8"
    assert {b.executes_as(p) for p in ("fp32", "fp16", "bf16")} == {"fp32"}


@pytest.mark.parametrize("name", NAMES)
def test_quantize_leaves_no_output_on_error(name, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    out = tmp_path / "int8.onnx"
    with pytest.raises(Exception):  # noqa: B017 - each quantizer raises its own type
        backends.get(name).quantize_int8(bad, out, np.zeros((4, 1, 8, 8), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]


def test_wrappers_take_the_backend(convnet, digits, tmp_path):
    from hadmc_core import quantize
    from hadmc_core.config import QuantizeConfig

    _, fp32 = convnet
    name = "openvino" if backends.get("openvino").available() else "onnxruntime"
    t = measure_latency(fp32, (1, 1, 8, 8), runs=5, warmup=1, backend=backends.get(name))
    assert t.runs == 5
    q = quantize.quantize_qdq(fp32, tmp_path / "q.onnx", digits.train,
                              QuantizeConfig(calib_samples=64), reduce_range=False,
                              exclude_nodes=[KEEP], backend=name)
    assert _weight_is_dequantized(q)[KEEP] is False


# -- the registry ---------------------------------------------------------------------


class Unavailable(Backend):
    name = "nowhere"
    artifact_format = "onnx-qdq"

    def available(self) -> bool:
        return False

    def open(self, path, threads=None, *, batch=None):  # type: ignore[no-untyped-def]
        raise AssertionError("never opened")

    def quantize_int8(self, fp32_path, out_path, calib_x, *, keep_fp32=(),  # type: ignore[no-untyped-def]
                      per_channel=True, reduce_range=False):
        raise AssertionError("never called")


@pytest.fixture
def nowhere():
    backends.register(Unavailable)
    yield backends.get("nowhere")
    backends._REGISTRY.pop("nowhere")
    backends._INSTANCES.pop("nowhere", None)


@pytest.mark.parametrize(("profile", "backend"), [
    ("x86-avx2", "onnxruntime"), ("x86-avx512-vnni", "onnxruntime"),
    ("arm64-generic", "onnxruntime"), ("jetson-orin", "onnxruntime"),
    pytest.param("x86-openvino", "openvino", marks=pytest.mark.skipif(
        not backends.get("openvino").available(), reason="openvino is not installed")),
])
def test_for_profile_takes_the_first_installed_runtime(profile, backend):
    assert backends.for_profile(load_profile(profile)).name == backend


def test_for_profile_skips_a_runtime_not_installed_and_names_what_is_missing(nowhere):
    prof = load_profile("x86-avx2").model_copy(update={"runtimes": ["nowhere-cpu",
                                                                   "onnxruntime-cpu"]})
    assert backends.for_profile(prof).name == "onnxruntime"
    prof = prof.model_copy(update={"runtimes": ["nowhere-cpu-1.0", "cann"]})
    with pytest.raises(ConfigError) as e:
        backends.for_profile(prof)
    assert "nowhere not installed" in str(e.value) and "cann not a backend" in str(e.value)


def test_for_profile_error_for_accelerator_runtimes():
    with pytest.raises(ConfigError, match="neuware not a backend.*onnxruntime, openvino"):
        backends.for_profile(load_profile("mlu370"))


def test_get_unknown_lists_the_backends():
    with pytest.raises(UnknownNameError, match="onnxruntime, openvino"):
        backends.get("tensorrt")
    assert backends.names()[:2] == ["onnxruntime", "openvino"]
    assert backends.get("onnxruntime") is backends.get("onnxruntime")
    assert backends.default().name == "onnxruntime"


# -- the timing loop ------------------------------------------------------------------


def test_time_runs_counts_warmup_and_runs():
    calls = []
    t = time_runs(lambda: calls.append(1), runs=7, warmup=3, threads=4)
    assert len(calls) == 10 and t.runs == 7 and len(t.samples) == 7 and t.threads == 4


def test_time_runs_goes_on_for_min_seconds_up_to_max_runs():
    t = time_runs(lambda: time.sleep(0.002), runs=2, warmup=0, min_seconds=0.05)
    assert t.runs > 2 and sum(t.samples) >= 45
    capped = time_runs(lambda: None, runs=3, warmup=0, min_seconds=10, max_runs=20)
    assert capped.runs == 20
    assert time_runs(lambda: None, runs=30, warmup=0, max_runs=5).runs == 30
    with pytest.raises(ValueError):
        time_runs(lambda: None, runs=0, warmup=0)


def test_time_runs_statistics_are_those_of_the_samples():
    values = iter([5.0, 1.0, 2.0, 3.0, 4.0] * 2)
    t = time_runs(lambda: time.sleep(next(values) / 1000), runs=5, warmup=5)
    assert min(t.samples) >= 1.0 and t.median_ms >= 3.0
    assert t.median_ms == statistics.median(t.samples)
    assert t.p90_ms == pytest.approx(np.percentile(t.samples, 90))
    assert t.p95_ms == pytest.approx(t.percentile(95))


@pytest.mark.parametrize("name", NAMES)
def test_agent_smoke_test_runs_on_each_backend(name, convnet, digits):
    from edge_agent.smoke import Probe, smoke_test

    model, fp32 = convnet
    x = digits.val.x[:4]
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    res = smoke_test(fp32, Probe(x, y, atol=1e-3, rtol=1e-3), runs=5, backend=name)
    assert res.max_abs_err is not None and res.max_abs_err < 1e-3
    assert 0 < res.p50_ms <= res.p95_ms <= res.p99_ms


@pytest.mark.parametrize("name", NAMES)
def test_latency_model_times_layers_with_the_backend(name, tmp_path):
    from edge_agent.optable import operator_table
    from hadmc_core.hal.latency import LatencyModel, LayerGeom

    lat = LatencyModel(load_profile("x86-avx2"), measure=True, threads=1, cache_dir=tmp_path,
                       backend=name)
    geom = LayerGeom("conv", 3, 1, 8, 8)
    assert lat.layer_ms(geom, 16, 16, "int8") > 0 and lat.source == f"measured-{name}"
    (cache,) = tmp_path.iterdir()  # one cache file per CPU, runtime and thread count
    other = "openvino" if name == "onnxruntime" else "onnxruntime"
    if backends.get(other).available():
        LatencyModel(load_profile("x86-avx2"), measure=True, threads=1, cache_dir=tmp_path,
                     backend=other).layer_ms(geom, 16, 16, "int8")
        assert len(list(tmp_path.iterdir())) == 2
    table = operator_table(1, [(geom, 8, 8)], backend=name)
    assert set(table) == {f"{geom.key}|fp32", f"{geom.key}|int8", "model|fp32", "model|int8"}
