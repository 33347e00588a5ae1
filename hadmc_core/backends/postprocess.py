"""INT8 quantization of the network part only, for graphs that end in post-processing.

A detector's ONNX graph ends in box decoding, score thresholding and NonMaxSuppression
(``hadmc_core.tasks.detection_export``). None of that has weights, and quantizing it does
harm: an 8-bit box coordinate is off by up to half a step of the image's range, the
calibration would record the ranges of scores and gathered boxes (empty when an image has
no detection), and every calibration batch runs NMS. So a backend's ``quantize_int8``,
wrapped by ``network_only``, is given the network alone and the post-processing is put back
unchanged in floating point:

- the post-processing ("tail") is every node from which no weight layer (Conv,
  ConvTranspose, Gemm, MatMul) can be reached; the network is the rest;
- the network is written as a model of its own whose outputs are the tensors the tail
  reads from it (a detector: the head's predictions, and the feature maps whose shapes
  give the anchor grid);
- the quantized network and the tail are joined again, with the original outputs,
  opset and metadata.

Graphs without post-processing (no ``NonMaxSuppression`` node and no ``hadmc.task`` =
``detect``) are quantized whole, as before. Cloud side (needs ``onnx``).
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hadmc_core.fsutil import atomic_path

WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
POSTPROCESS_OPS = {"NonMaxSuppression"}

F = TypeVar("F", bound=Callable[..., Path])


def has_postprocess(model: Any) -> bool:
    """Whether the graph ends in post-processing the quantizer should leave alone."""
    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get("hadmc.task") == "detect" or any(
        n.op_type in POSTPROCESS_OPS for n in model.graph.node)


def split(model: Any) -> tuple[list[Any], list[Any], list[str]]:
    """(network nodes, tail nodes, boundary tensors): the tail is every node that reaches no
    weight layer; the boundary is what the tail (or a graph output) reads from the network,
    graph inputs and initializers aside."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers.setdefault(name, []).append(i)
    feeds_weights = [n.op_type in WEIGHT_OPS for n in nodes]
    changed = True
    while changed:  # backwards closure: a node feeding a node that feeds weights
        changed = False
        for i, n in enumerate(nodes):
            if feeds_weights[i]:
                continue
            if any(feeds_weights[j] for o in n.output for j in consumers.get(o, [])):
                feeds_weights[i] = changed = True
    net = [n for i, n in enumerate(nodes) if feeds_weights[i]]
    tail = [n for i, n in enumerate(nodes) if not feeds_weights[i]]
    produced = {o for n in net for o in n.output}
    wanted = [name for n in tail for name in n.input] + [o.name for o in model.graph.output]
    boundary = list(dict.fromkeys(name for name in wanted if name in produced))
    return net, tail, boundary


def _network_model(model: Any, net: list[Any], boundary: list[str]) -> Any:
    import onnx
    from onnx import TensorProto, helper

    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    used = {name for n in net for name in n.input}
    graph = helper.make_graph(
        net, model.graph.name or "network", list(model.graph.input),
        [infos[b] if b in infos else helper.make_tensor_value_info(b, TensorProto.FLOAT, None)
         for b in boundary],
        initializer=[t for t in model.graph.initializer if t.name in used])
    out = helper.make_model(graph, opset_imports=list(model.opset_import),
                            producer_name=model.producer_name)
    out.ir_version = model.ir_version
    return out


def _join(quantized: Any, original: Any, tail: list[Any], boundary: list[str]) -> Any:
    """The quantized network with the original tail, outputs, opsets and metadata."""
    g = quantized.graph
    outs = [o.name for o in g.output]
    # the quantizer keeps the network's outputs in order; map them by position
    rename = {b: q for b, q in zip(boundary, outs, strict=True) if b != q}
    present = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} \
        | {i.name for i in g.input}
    tail_inputs = {name for n in tail for name in n.input}
    for t in original.graph.initializer:
        if t.name in tail_inputs and t.name not in present:
            g.initializer.append(t)
    for n in tail:
        for k, name in enumerate(n.input):
            n.input[k] = rename.get(name, name)
        g.node.append(n)
    del g.output[:]
    g.output.extend(original.graph.output)
    versions = {o.domain: o.version for o in quantized.opset_import}
    for o in original.opset_import:
        if versions.get(o.domain, 0) < o.version:
            versions[o.domain] = o.version
    del quantized.opset_import[:]
    for domain, version in versions.items():
        entry = quantized.opset_import.add()
        entry.domain, entry.version = domain, version
    meta = {p.key: p.value for p in quantized.metadata_props}
    meta.update({p.key: p.value for p in original.metadata_props})
    del quantized.metadata_props[:]
    for key, value in meta.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    return quantized


def quantize_network(fp32_path: Path, out_path: Path,
                     quantize: Callable[[Path, Path], object]) -> Path:
    """``quantize(src, dst)`` on the network part of ``fp32_path`` (see the module doc),
    the post-processing joined back; the whole graph when it has none."""
    import onnx

    out_path = Path(out_path)
    model = onnx.load(str(fp32_path))
    if not has_postprocess(model):
        quantize(Path(fp32_path), out_path)
        return out_path
    net, tail, boundary = split(model)
    with tempfile.TemporaryDirectory(prefix="hadmc-net-") as tmp:
        src, dst = Path(tmp) / "network.onnx", Path(tmp) / "network-int8.onnx"
        onnx.save(_network_model(model, net, boundary), str(src))
        quantize(src, dst)
        joined = _join(onnx.load(str(dst)), model, tail, boundary)
    onnx.checker.check_model(joined)
    with atomic_path(out_path) as target:
        onnx.save(joined, str(target))
    return out_path


def network_only(method: F) -> F:
    """Decorator of ``Backend.quantize_int8(self, fp32_path, out_path, calib_x, **kw)``:
    quantize only the network part (``quantize_network``)."""

    @functools.wraps(method)
    def wrapper(self: Any, fp32_path: Path, out_path: Path, calib_x: Any, **kw: Any) -> Path:
        return quantize_network(fp32_path, out_path,
                                lambda src, dst: method(self, src, dst, calib_x, **kw))

    return wrapper  # type: ignore[return-value]
