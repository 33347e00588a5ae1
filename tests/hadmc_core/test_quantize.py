import statistics
import time

import numpy as np
import pytest
import torch

from hadmc_core import quantize
from hadmc_core.config import QuantizeConfig
from hadmc_core.data import Split
from hadmc_core.fuse import fold_batchnorm
from hadmc_core.models import ArchSpec, build_model
from hadmc_core.onnx_io import export_onnx, session, weight_layers


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ArchSpec("resnet18", 1, 10, "small", width=0.5)).eval()
    x = torch.randn(2, 1, 28, 28)
    fused = fold_batchnorm(model, x).model
    path = export_onnx(fused, x, tmp_path_factory.mktemp("q") / "fp32.onnx")
    rng = np.random.default_rng(0)
    calib = Split(rng.standard_normal((256, 1, 28, 28)).astype(np.float32), np.zeros(256, int))
    return fused, path, calib


def _interleaved_median(paths, rounds=6, runs=15):
    sessions = [session(p) for p in paths]
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    times = [[] for _ in paths]
    for s in sessions:
        for _ in range(10):
            s.run(None, {"input": x})
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, {"input": x})
                times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def test_int8_qdq_runs_and_is_faster_than_fp32(fp32_model, tmp_path):
    fused, fp32, calib = fp32_model
    cfg = QuantizeConfig(calib_samples=64)
    q = quantize.quantize_qdq(fp32, tmp_path / "int8.onnx", calib, cfg, reduce_range=True)
    x = calib.x[:8]
    ref = session(fp32).run(None, {"input": x})[0]
    out = session(q).run(None, {"input": x})[0]
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9
    assert q.stat().st_size < 0.35 * fp32.stat().st_size
    t_fp32, t_int8 = _interleaved_median([fp32, q])
    assert t_int8 < t_fp32, f"INT8 {t_int8 * 1e3:.3f} ms vs FP32 {t_fp32 * 1e3:.3f} ms"


def test_mixed_precision_excludes_the_chosen_layers(fp32_model, tmp_path):
    fused, fp32, calib = fp32_model
    cfg = QuantizeConfig(calib_samples=64, sensitivity_samples=32)
    sens = quantize.sensitivity(fused, calib, cfg, reduce_range=True)
    names = quantize.torch_to_onnx_names(fused, torch.from_numpy(calib.x[:1]), fp32)
    assert set(names) == set(sens), "every torch layer maps to an ONNX node"
    assert all(v >= 0 for v in sens.values()) and max(sens.values()) > 0
    ranking = quantize.rank_layers(sens, {n: 1.0 for n in sens})
    keep = ranking.order[:2]
    q = quantize.quantize_qdq(fp32, tmp_path / "mixed.onnx", calib, cfg, True,
                              [names[n] for n in keep])
    import onnx

    graph = onnx.load(str(q)).graph
    kept_nodes = {names[n] for n in keep}
    float_convs = set()
    produced_by_dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] not in produced_by_dq:
            float_convs.add(node.name)
    assert kept_nodes <= float_convs
    assert len(float_convs) == len(kept_nodes)
    assert len(weight_layers(fp32)) == len(sens)


def test_reduce_range_follows_the_profile():
    from hadmc_core.hal import load_profile

    cfg = QuantizeConfig()
    assert quantize.use_reduce_range(cfg, load_profile("x86-avx2"))
    assert not quantize.use_reduce_range(cfg, load_profile("x86-avx512-vnni"))
    assert not quantize.use_reduce_range(QuantizeConfig(reduce_range="off"),
                                         load_profile("x86-avx2"))


def test_every_conv_bias_is_quantized_so_ort_can_fuse_it(fp32_model, tmp_path):
    """Biases shared through Identity nodes (torch.onnx.export deduplicates equal tensors)
    are not quantized, and ONNX Runtime then runs those Conv layers in FP32 between
    Dequantize/Quantize pairs (INT8 slower than FP32)."""
    import onnx

    fused, fp32, calib = fp32_model
    g = onnx.load(str(fp32)).graph
    inits = {t.name for t in g.initializer}
    assert not [n for n in g.node if n.op_type == "Identity" and n.input[0] in inits]
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert convs and all(len(c.input) < 3 or c.input[2] in inits for c in convs)

    q = quantize.quantize_qdq(fp32, tmp_path / "int8.onnx", calib,
                              QuantizeConfig(calib_samples=64), reduce_range=False)
    g = onnx.load(str(q)).graph
    producer = {o: n for n in g.node for o in n.output}
    int32 = {t.name for t in g.initializer if t.data_type == onnx.TensorProto.INT32}
    for c in (n for n in g.node if n.op_type == "Conv" and len(n.input) > 2):
        dq = producer.get(c.input[2])
        assert dq is not None and dq.op_type == "DequantizeLinear", c.name
        assert dq.input[0] in int32, c.name
