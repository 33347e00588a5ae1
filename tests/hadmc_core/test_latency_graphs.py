"""The latency table times layers as the exported INT8 models run them: ORT must fuse the
INT8 timing graph into one integer kernel (QLinearConv / integer MatMul), not run it as
float Conv between Quantize/Dequantize pairs, or the table prices INT8 wrongly."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from hadmc_core.hal.latency import LayerGeom, _layer_onnx


def _optimized_ops(data: bytes, tmp_path) -> list[str]:
    onnx = pytest.importorskip("onnx")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]


@pytest.mark.parametrize("geom,cin,cout", [
    (LayerGeom("conv", 3, 1, 14, 14), 32, 64), (LayerGeom("conv", 1, 2, 14, 14), 32, 64),
    (LayerGeom("dwconv", 3, 1, 8, 8), 16, 16)], ids=["conv3x3", "conv1x1-s2", "dwconv"])
def test_int8_conv_timing_graph_is_one_qlinearconv(geom, cin, cout, tmp_path) -> None:
    ops = _optimized_ops(_layer_onnx(geom, cin, cout, "int8"), tmp_path)
    assert ops.count("QLinearConv") == 1, ops
    assert "Conv" not in ops and "FusedConv" not in ops, ops


def test_int8_linear_timing_graph_runs_integer_matmul(tmp_path) -> None:
    ops = _optimized_ops(_layer_onnx(LayerGeom("linear"), 64, 10, "int8"), tmp_path)
    assert "MatMul" not in ops, ops
    assert any(op in ops for op in ("QLinearMatMul", "MatMulIntegerToFloat",
                                    "DynamicQuantizeMatMul")), ops


def test_fp32_timing_graph_fuses_relu(tmp_path) -> None:
    ops = _optimized_ops(_layer_onnx(LayerGeom("conv", 3, 1, 8, 8), 8, 8, "fp32"), tmp_path)
    assert "Relu" not in ops and ops.count("Conv") + ops.count("FusedConv") == 1, ops
