"""The INT8 file HAD-MC ships for OpenVINO (NNCF's quantization of the ONNX graph, a QDQ
ONNX file that OpenVINO reads) compiles to the same CPU kernels as NNCF's quantization of
the OpenVINO model saved as IR, what a user of NNCF would run instead: the same layers,
in the same order, at the same runtime precisions, with the same reorders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hadmc_core import backends
from hadmc_core.onnx_io import export_onnx
from tests.hadmc_core.nets import ConvNet, trained

pytest.importorskip("openvino")
pytest.importorskip("nncf")

SKIP = {"Parameter", "Result", "Constant", "Input", "Output"}


def kernels(path) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    """(layer type, kernel, runtime precision) of each executed layer of the compiled model."""
    compiled = backends.get("openvino").compile(path, threads=1, batch=1)
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind not in SKIP:
            out.append((kind, info["primitiveType"].astype(str),
                        info["runtimePrecision"].astype(str)))
    return out


def test_shipped_qdq_file_compiles_like_nncf_openvino_ir(digits, tmp_path):
    import nncf
    import openvino as ov

    net = trained(ConvNet(), digits, epochs=2)
    fp32 = export_onnx(net, torch.from_numpy(digits.val.x[:1]), tmp_path / "fp32.onnx")
    calib = digits.train.x[:64]
    shipped = backends.get("openvino").quantize_int8(fp32, tmp_path / "int8.onnx", calib)
    ir = nncf.quantize(ov.Core().read_model(str(fp32)),
                       nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                       subset_size=len(calib))
    ov.save_model(ir, str(tmp_path / "nncf.xml"))
    ours, theirs = kernels(shipped), kernels(tmp_path / "nncf.xml")
    assert ours == theirs  # reorders included: the QDQ file adds none
    weights = [p for kind, _, p in ours if kind in ("Convolution", "FullyConnected")]
    assert weights and all(p in ("i8", "u8") for p in weights), ours
    # and they compute nearly the same thing (two calibrations of one graph)
    a = backends.get("openvino").predict(shipped, digits.test.x)[0].argmax(1)
    b = backends.get("openvino").predict(tmp_path / "nncf.xml", digits.test.x)[0].argmax(1)
    assert np.mean(a == b) > 0.9
