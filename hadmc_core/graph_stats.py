"""What an ONNX graph holds, read from the file alone: its weight layers with their
geometry (for the latency model), parameters, multiply-accumulates, the share of the
parameter bytes in MatMul/Gemm weights, and a per-node INT8 weight error.

Used for every candidate's per-layer estimate and for models that exist only as a graph.
Shapes come from ONNX shape inference with the batch dimension at 1.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_core.hal.latency import LatencyModel, LayerGeom

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class GraphLayer:
    """One Conv/Gemm/MatMul node with a constant weight."""

    node: str
    op: str
    geom: LayerGeom
    cin: int
    cout: int
    weight: str                  # initializer name
    weight_shape: tuple[int, ...]
    tokens: int = 1              # rows a MatMul applies its weight to, per sample

    @property
    def macs(self) -> int:
        return self.geom.macs(self.cin, self.cout) * self.tokens


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def save_inline(src: Path, dst: Path) -> Path:
    """Copy an ONNX model with any external weights (files beside it) stored inside."""
    import onnx

    onnx.save(onnx.load(str(src)), str(dst))
    return dst


def _static_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of every value, batch (first input dimension) set to 1 where symbolic."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    # an unknown domain fails inference: layers whose input shape is unknown are skipped
    with contextlib.suppress(Exception):
        m = onnx.shape_inference.infer_shapes(m)
    out: dict[str, tuple[int, ...]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    return out


def _initializers(model: Any) -> dict[str, Any]:
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # Identity aliases of shared initializers
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    return inits


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def layers(path: Path, model: Any | None = None) -> dict[str, GraphLayer]:
    """Weight layers by node name, in graph order."""
    model = model if model is not None else _load(path)
    shapes, inits = _static_shapes(model), _initializers(model)
    out: dict[str, GraphLayer] = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = inits[node.input[1]]
        ws, xs = tuple(int(d) for d in w.dims), shapes.get(node.input[0])
        layer = _layer(node, ws, xs)
        if layer is not None:
            out[node.name] = layer
    return out


def _layer(node: Any, ws: tuple[int, ...], xs: tuple[int, ...] | None) -> GraphLayer | None:
    w = node.input[1]
    if node.op_type == "Conv":
        if len(ws) != 4 or xs is None or len(xs) != 4:
            return None
        group, cin = int(_attr(node, "group", 1)), xs[1]
        kind = "dwconv" if group > 1 and group == cin else "conv"
        stride = int((_attr(node, "strides", [1, 1]) or [1])[0])
        geom = LayerGeom(kind, ws[2], stride, xs[2], xs[3])
        return GraphLayer(node.name, "Conv", geom, cin, ws[0], w, ws)
    if len(ws) != 2:
        return None
    if node.op_type == "Gemm":
        cout, cin = ws if _attr(node, "transB", 0) else ws[::-1]
        return GraphLayer(node.name, "Gemm", LayerGeom("linear"), cin, cout, w, ws)
    tokens = math.prod(xs[1:-1]) if xs is not None and len(xs) > 2 else 1
    return GraphLayer(node.name, "MatMul", LayerGeom("linear"), ws[0], ws[1], w, ws, tokens)


def param_counts(path: Path, model: Any | None = None) -> tuple[int, int]:
    """(elements, bytes) of the floating-point initializers."""
    import onnx

    model = model if model is not None else _load(path)
    n = b = 0
    for t in model.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                           onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE):
            count = math.prod(t.dims)
            n += count
            b += count * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return n, b


def sizes(path: Path) -> tuple[int, int]:
    """(params, MACs per sample) of a floating-point graph."""
    model = _load(path)
    return param_counts(path, model)[0], sum(ly.macs for ly in layers(path, model).values())


def matmul_weight_fraction(path: Path) -> tuple[float, list[str]]:
    """Share of the parameter bytes held by MatMul/Gemm constant 2-D weights, and those
    nodes."""
    model = _load(path)
    total = param_counts(path, model)[1]
    mm = [ly for ly in layers(path, model).values() if ly.op in ("MatMul", "Gemm")]
    inits = _initializers(model)
    weights = {ly.weight for ly in mm}
    mm_bytes = sum(math.prod(inits[w].dims) * 4 for w in weights)
    return (mm_bytes / total if total else 0.0), [ly.node for ly in mm]


def estimate_ms(lat: LatencyModel, graph: dict[str, GraphLayer],
                precisions: dict[str, str]) -> float:
    """The latency model's sum over the weight layers, each at its planned precision
    (``fp32`` when not listed)."""
    return sum(lat.layer_ms(ly.geom, ly.cin, ly.cout, precisions.get(name, "fp32"))
               * ly.tokens for name, ly in graph.items())


def by_precision(lat: LatencyModel, graph: dict[str, GraphLayer],
                  precisions: dict[str, str]) -> tuple[dict[str, float], dict[str, float]]:
    """Per precision, the sum of the layers' estimates and of their constant parts."""
    by_p: dict[str, float] = {}
    fixed: dict[str, float] = {}
    for name, ly in graph.items():
        p = precisions.get(name, "fp32")
        by_p[p] = by_p.get(p, 0.0) + lat.layer_ms(ly.geom, ly.cin, ly.cout, p) * ly.tokens
        fixed[p] = fixed.get(p, 0.0) + lat.fixed_ms(ly.geom, p)
    return by_p, fixed


def model_ms(lat: LatencyModel, graph: dict[str, GraphLayer],
             precisions: dict[str, str], corrected: bool = True) -> float:
    """The latency model's estimate of the whole model: its weight layers per precision,
    plus what the model costs beyond them where the model fitted that
    (``LatencyModel.fit_overhead``), times a device's correction where it has one
    (``corrected=False``: without it)."""
    by_p, fixed = by_precision(lat, graph, precisions)
    return lat.model_ms(by_p, fixed, corrected=corrected)


def main_precision(lat: LatencyModel, graph: dict[str, GraphLayer],
                   precisions: dict[str, str]) -> str:
    """The precision of the largest share of the model's layer time."""
    by_p = by_precision(lat, graph, precisions)[0]
    return max(by_p, key=lambda p: by_p[p]) if by_p else "fp32"


def int8_weight_error(path: Path, per_channel: bool = True) -> dict[str, float]:
    """Relative squared error of symmetric INT8 weights, per weight node: a cheap proxy
    for a node's sensitivity when there is no PyTorch model to measure it on."""
    from onnx import numpy_helper

    model = _load(path)
    inits = _initializers(model)
    out = {}
    for name, ly in layers(path, model).items():
        w = numpy_helper.to_array(inits[ly.weight]).astype(np.float64)
        rows = w.reshape(w.shape[0], -1) if ly.op != "MatMul" else w.T
        scale = (np.abs(rows).max(1, keepdims=True) if per_channel
                 else np.abs(rows).max(keepdims=True)) / 127.0
        scale = np.maximum(scale, 1e-12)
        err = rows - np.round(rows / scale).clip(-127, 127) * scale
        out[name] = float((err ** 2).sum() / max((rows ** 2).sum(), 1e-24))
    return out
