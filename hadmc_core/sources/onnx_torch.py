"""ONNX → PyTorch: a ``torch.fx.GraphModule`` that computes what the ONNX graph computes.

Weights live in real ``nn.Conv*``, ``nn.Linear`` and ``nn.BatchNorm*`` submodules named
after the exporter's scopes (``/layer1/layer1.0/conv1/Conv`` → ``layer1.0.conv1``), and
``forward`` is plain torch ops, so Torch-Pruning traces and prunes the result like any
hand-written model. Operators are mapped from a fixed table (``supported_operators()``);
anything else raises ``UnsupportedOperatorError`` naming the operator and node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import fx

from hadmc_core.errors import HadmcError, ModelSourceError, UnsupportedOperatorError
from hadmc_core.sources import onnx_layers, onnx_ops, onnx_shapes  # noqa: F401  (handlers)
from hadmc_core.sources.onnx_file import read_onnx
from hadmc_core.sources.onnx_graph import (
    OPS,
    Builder,
    Const,
    Node,
    ShapeVal,
    Tensor,
    Value,
    scope_path,
)

_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOAT_TYPES = {1: torch.float32, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}
_INT_TYPES = {6: torch.int32, 7: torch.int64, 9: torch.bool}


def supported_operators() -> list[str]:
    """ONNX operator types (default domain) the converter maps."""
    return sorted(OPS)


def onnx_to_torch(path: Path, input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """Convert the ONNX file at ``path``; ``input_shape`` (no batch) fills dynamic dims."""
    return convert(read_onnx(Path(path)), input_shape)


def op_name(node: Any) -> str:
    """The operator as reported: ``Conv``, or ``domain.Op`` outside the default domain."""
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def node_label(node: Any, index: int) -> str:
    return node.name or f"{node.op_type}#{index}"


def first_unsupported(model: Any) -> tuple[str, str] | None:
    """(operator, node) of the first node the converter has no mapping for."""
    for i, node in enumerate(model.graph.node):
        if node.domain not in _DEFAULT_DOMAINS or node.op_type not in OPS:
            return op_name(node), node_label(node, i)
    return None


def graph_inputs(model: Any) -> list[Any]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def example_shape(value_info: Any, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The concrete shape (batch 1 when dynamic) of a graph input."""
    dims = value_info.type.tensor_type.shape.dim
    out = []
    for d, dim in enumerate(dims):
        static = dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None
        given = None
        if input_shape is not None and len(input_shape) == len(dims) - 1 and d > 0:
            given = int(input_shape[d - 1])
            if static is not None and static != given:
                raise ModelSourceError(
                    f"input {value_info.name!r} has dimension {d} = {static} in the graph, "
                    f"but the input shape given is {tuple(input_shape)}")
        size = static or given or (1 if d == 0 else None)
        if size is None:
            raise ModelSourceError(
                f"input {value_info.name!r} has a dynamic dimension {d}; give the input "
                "shape (channels, height, width) explicitly")
        out.append(size)
    return tuple(out)


def _attrs(node: Any) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            out[a.name] = torch.from_numpy(numpy_helper.to_array(a.t).copy())
        elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS,
                        onnx.AttributeProto.SPARSE_TENSOR):
            out[a.name] = None
        else:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [x.decode("utf-8", "replace") for x in v]
            out[a.name] = v
    return out


def _fusions(model: Any, consts: dict[str, Const]) -> dict[int, tuple[int, str]]:
    """MatMul (constant 2-D weight) → its only consumer Add of a 1-D constant: one Linear."""
    graph = model.graph
    users: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            users.setdefault(name, []).append(i)
    outputs = {o.name for o in graph.output}
    plan = {}
    for i, node in enumerate(graph.node):
        if node.op_type != "MatMul" or node.domain not in _DEFAULT_DOMAINS:
            continue
        w = consts.get(node.input[1])
        out = node.output[0]
        if w is None or w.val.dim() != 2 or out in outputs or len(users.get(out, [])) != 1:
            continue
        j = users[out][0]
        add = graph.node[j]
        if add.op_type != "Add":
            continue
        other = add.input[1] if add.input[0] == out else add.input[0]
        bias = consts.get(other)
        if bias is not None and bias.val.numel() == w.val.shape[1] and \
                bias.val.shape[-1:] == (w.val.shape[1],) and bias.val.dim() <= 2:
            plan[i] = (j, other)
    return plan


def _scope(proto: Any, name: str, initializers: set[str]) -> list[str]:
    weight = proto.input[1] if len(proto.input) > 1 and proto.input[1] in initializers \
        else None
    scopes = next((p.value for p in proto.metadata_props
                   if p.key == "pkg.torch.onnx.name_scopes"), None)
    return scope_path(name, weight, scopes)


def _run_node(b: Builder, node: Node) -> list[Value | None]:
    try:
        out = OPS[node.op](b, node)
    except HadmcError:
        raise
    except Exception as e:  # a mapping that does not fit this node's inputs
        raise UnsupportedOperatorError(node.op, node.name, f"{type(e).__name__}: {e}") from None
    return list(out) if isinstance(out, list) else [out]


def convert(model: Any, input_shape: tuple[int, ...] | None = None) -> fx.GraphModule:
    """A ``torch.fx.GraphModule`` equivalent to ``model`` (a checked ModelProto)."""
    from onnx import numpy_helper

    missing = first_unsupported(model)
    if missing:
        raise UnsupportedOperatorError(*missing)
    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 13)
    env: dict[str, Value | None] = {
        t.name: Const(torch.from_numpy(numpy_helper.to_array(t).copy()))
        for t in model.graph.initializer}
    producers: dict[str, tuple[str, str]] = {}
    initializers = set(env)
    b = Builder()
    for k, vi in enumerate(graph_inputs(model)):
        elem = vi.type.tensor_type.elem_type
        shape = example_shape(vi, input_shape if k == 0 else None)
        if elem in _FLOAT_TYPES:
            example = torch.randn(shape, generator=torch.Generator().manual_seed(0),
                                  dtype=_FLOAT_TYPES[elem])
        elif elem in _INT_TYPES:
            example = torch.zeros(shape, dtype=_INT_TYPES[elem])
        else:
            raise ModelSourceError(f"input {vi.name!r} has ONNX element type {elem}, which is "
                                   "not supported")
        env[vi.name] = b.placeholder(vi.name, example)
    plan = _fusions(model, env)  # type: ignore[arg-type]
    skip = {j for j, _ in plan.values()}
    with torch.no_grad():
        for i, proto in enumerate(model.graph.node):
            if i in skip:
                continue
            name = node_label(proto, i)
            inputs: list[Value | None] = []
            for x in proto.input:
                if x and env.get(x) is None:
                    op, where = producers.get(x, ("?", "?"))
                    raise UnsupportedOperatorError(
                        op, where, f"its output {x!r} is not available in the conversion")
                inputs.append(env[x] if x else None)
            node = Node(proto.op_type, name, inputs, _attrs(proto), len(proto.output), opset,
                        _scope(proto, name, initializers))
            outputs = list(proto.output)
            if i in plan:
                j, bias = plan[i]
                node.extra["bias"] = env[bias].val.reshape(-1)  # type: ignore[union-attr]
                outputs = list(model.graph.node[j].output)
            values = _run_node(b, node)
            for k, out_name in enumerate(outputs):
                if out_name:
                    env[out_name] = values[k] if k < len(values) else None
                    producers[out_name] = (proto.op_type, name)
    results = []
    for o in model.graph.output:
        v = env.get(o.name)
        if v is None:
            op, where = producers.get(o.name, ("?", "?"))
            raise UnsupportedOperatorError(op, where, f"graph output {o.name!r} is missing")
        results.append(b.arg(b.to_tensor(v) if isinstance(v, ShapeVal) else v))
    b.graph.output(results[0] if len(results) == 1 else tuple(results))
    return _finish(b)


def _finish(b: Builder) -> fx.GraphModule:
    fx.GraphModule(b.attrs, b.graph).graph.eliminate_dead_code()  # purity needs a module
    used = {n.target for n in b.graph.nodes if n.op in ("call_module", "get_attr")}
    attrs = {k: v for k, v in b.attrs.items() if k in used}
    gm = fx.GraphModule(attrs, b.graph, class_name="OnnxModel")
    gm.meta["onnx_nodes"] = {k: v for k, v in b.onnx_nodes.items() if k in used}
    return gm.eval()


__all__ = ["Tensor", "convert", "onnx_to_torch", "supported_operators"]
