"""INT8 quantization of a detector covers the network only: the decoding, score threshold
and NMS after the head stay in floating point, are never calibrated, and the joined graph
runs with its metadata and its (K, 6) output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hadmc_core import backends
from hadmc_core.backends import postprocess
from hadmc_core.models.yolo import YOLO
from hadmc_core.tasks.detection_export import export_detector

SIDE = 64


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    torch.manual_seed(0)
    model = YOLO(3, 2, width=0.25).eval()
    with torch.no_grad():  # scores above the threshold, so NMS has work to do
        for branch in model.cls:
            branch.pred.bias.fill_(0.5)
    x = np.random.default_rng(0).random((8, 3, SIDE, SIDE), dtype=np.float32)
    path = export_detector(model, torch.from_numpy(x[:1]), tmp_path_factory.mktemp("det") /
                           "fp32.onnx", ["a", "b"])
    return path, x


def _tail_tensors(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path))
    _net, tail, _boundary = postprocess.split(model)
    return {o for n in tail for o in n.output}


@pytest.mark.parametrize("name", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.slow)])
def test_only_the_network_is_quantized(detector, tmp_path: Path, monkeypatch, name: str):
    import onnx

    backend = backends.get(name)
    if not backend.available():
        pytest.skip(f"{name} is not installed")
    fp32, x = detector
    tail = _tail_tensors(fp32)
    assert {"boxes", "scores", "nms_selected", "detections"} <= tail
    seen: list[set[str]] = []
    real = postprocess.quantize_network

    def spy(src, dst, quantize):  # type: ignore[no-untyped-def]
        def inner(a: Path, b: Path) -> object:
            seen.append({n.op_type for n in onnx.load(str(a)).graph.node})
            return quantize(a, b)
        return real(src, dst, inner)

    monkeypatch.setattr(postprocess, "quantize_network", spy)
    q = backend.quantize_int8(fp32, tmp_path / "int8.onnx", x, reduce_range=True)
    assert seen and "NonMaxSuppression" not in seen[0] and "Conv" in seen[0]  # calibrated
    m = onnx.load(str(q))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("NonMaxSuppression") == 1 and ops.count("QuantizeLinear") > 10
    for n in m.graph.node:  # no tensor of the post-processing is quantized
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert n.input[0] not in tail, n.name
    assert [o.name for o in m.graph.output] == ["detections"]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["hadmc.task"] == "detect" and "hadmc.classes" in meta
    for runtime in ("onnxruntime", "openvino"):
        b = backends.get(runtime)
        if not b.available():
            continue
        want = b.open(fp32, 1, batch=1).run({"images": x[:1]})[0]
        got = b.open(q, 1, batch=1).run({"images": x[:1]})[0]
        assert got.ndim == 2 and got.shape[1] == 6 and len(got) > 0
        assert len(want) > 0 and set(np.unique(got[:, 5])) <= {0.0, 1.0}


def test_a_classifier_is_quantized_whole(tmp_path: Path):
    from hadmc_core.onnx_io import export_onnx
    from tests.hadmc_core.nets import ConvNet

    torch.manual_seed(0)
    x = np.random.default_rng(0).random((8, 1, 16, 16), dtype=np.float32)
    fp32 = export_onnx(ConvNet().eval(), torch.from_numpy(x[:1]), tmp_path / "fp32.onnx")
    import onnx

    assert not postprocess.has_postprocess(onnx.load(str(fp32)))
    q = backends.get("onnxruntime").quantize_int8(fp32, tmp_path / "int8.onnx", x)
    ops = [n.op_type for n in onnx.load(str(q)).graph.node]
    assert ops.count("QuantizeLinear") > 3
