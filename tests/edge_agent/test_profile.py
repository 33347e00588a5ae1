"""The device profile validates against the HAL schema; the operator table uses the latency
model's keys; the protobuf-written timing graphs match what the onnx package builds."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.optable import operator_table
from edge_agent.profile import device_profile
from hadmc_core.hal import parse_profile
from hadmc_core.hal.latency import LatencyModel, LayerGeom, _layer_onnx


def test_profile_is_a_valid_hal_profile() -> None:
    p = parse_profile(device_profile("edge-1"), "device")
    assert p.name == "edge-1" and p.cores >= 1 and p.memory_gb > 0
    assert p.runtimes[0].startswith("onnxruntime-")
    assert "onnxruntime" in p.description and p.isa in ("x86_64", "arm64", "other")


def test_operator_table_feeds_the_latency_model() -> None:
    geom = LayerGeom("dwconv", 3, 1, 8, 8)
    table = operator_table(1, [(geom, 16, 16)], precisions=("fp32",))
    assert list(table) == ["dwconv-k3-s1-8x8|fp32", "model|fp32"]
    a, b = table["dwconv-k3-s1-8x8|fp32"]
    assert a >= 0 and b >= 0
    c, k, j = table["model|fp32"]  # the whole-model term: calibration chains timed whole
    assert min(c, k, j) >= 0
    model = LatencyModel(parse_profile(device_profile("t")), table=table)
    assert model.source == "device-table+whole-model-term"
    assert model.layer_ms(geom, 16, 16, "fp32") == pytest.approx(a + b * geom.macs(16, 16) / 1e6)


@pytest.mark.parametrize("geom,cin,cout", [
    (LayerGeom("conv", 3, 2, 16, 16), 8, 16), (LayerGeom("dwconv", 3, 1, 8, 8), 8, 8),
    (LayerGeom("linear"), 32, 10)], ids=["conv", "dwconv", "linear"])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_written_graphs_match_onnx_helper(geom: LayerGeom, cin: int, cout: int,
                                          precision: str) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    data = _layer_onnx(geom, cin, cout, precision)
    m = onnx.load_from_string(data)
    assert [n.op_type for n in m.graph.node][-1] in ("Relu", "DequantizeLinear")
    assert m.opset_import[0].version == 17 and m.ir_version == 8
    # the same graph rebuilt through onnx.helper gives the same outputs
    rebuilt = helper.make_model(m.graph, opset_imports=m.opset_import, ir_version=8)
    shape = [1, cin] if geom.kind == "linear" else [1, cin, geom.h, geom.w]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    run = [ort.InferenceSession(b, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
           for b in (data, rebuilt.SerializeToString())]
    np.testing.assert_array_equal(run[0], run[1])
