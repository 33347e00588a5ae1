"""INT4 weight-only on OpenVINO: its ONNX reader runs MatMulNBits as a FullyConnected
layer with 4-bit weights, so the INT4 step is tried for an OpenVINO target too and the
report says what each node ran as."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from hadmc_core import backends
from hadmc_core.compress import compress
from hadmc_core.config import Int4Config, PipelineConfig
from hadmc_core.hal import load_profile
from hadmc_core.techniques.int4 import gemm_to_matmul, matmul_nbits
from tests.hadmc_core.nets import FAST, mlp, trained

pytestmark = pytest.mark.skipif(not backends.get("openvino").available(),
                                reason="OpenVINO is not installed")


def test_openvino_runs_matmulnbits_with_4_bit_weights_as_onnx_runtime_computes(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10)).eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(tmp_path / "fp32.onnx"),
                      dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    gemms = [n.name for n in onnx.load(str(tmp_path / "fp32.onnx")).graph.node
             if n.op_type == "Gemm"]
    gemm_to_matmul(tmp_path / "fp32.onnx", tmp_path / "mm.onnx", gemms)
    q4 = matmul_nbits(tmp_path / "mm.onnx", tmp_path / "q4.onnx", gemms, Int4Config())
    assert {n.op_type for n in onnx.load(str(q4)).graph.node} >= {"MatMulNBits"}
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    ov, ort = backends.get("openvino"), backends.get("onnxruntime")
    np.testing.assert_allclose(ov.predict(q4, x)[0], ort.predict(q4, x)[0], atol=1e-4)
    ran = ov.executed_precisions(q4, threads=1)
    assert ran == {f"{g}_Q4": "int4" for g in gemms}


def test_int4_step_is_tried_for_an_openvino_target(digits, tmp_path):
    model = trained(mlp(), digits)
    cfg = PipelineConfig.from_dict({**FAST, "prune": {"enabled": False},
                                    "distill": {"enabled": False},
                                    "quantize": {"keep_ladder": [0], "calib_samples": 64,
                                                 "sensitivity_samples": 32},
                                    "constraints": {"max_accuracy_drop": 3.0}})
    prof = load_profile("x86-openvino").model_copy(update={"int4_weight_only": True})
    rep = compress(model, digits, prof, tmp_path / "out", cfg).report
    assert rep["backend"] == "openvino"
    int4 = rep["int4_weight_only"]
    assert "reason" not in int4 or int4["reason"].startswith("tried"), int4
    (tried,) = int4["tried"]
    assert tried["id"] == "c0-q0-int4" and tried["bytes_saved"] > 20_000
    assert set(int4["executes_as"].values()) == {"int4 weights, fp32 compute"}
    assert len(int4["executes_as"]) == int4["nodes"] == 3
