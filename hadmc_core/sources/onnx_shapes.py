"""ONNX operators on shapes and layouts: constants, casts, reshapes, indexing, reductions.

Shapes stay symbolic (``ShapeVal``) so that reshapes follow the tensors at run time.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch

from hadmc_core.sources.onnx_graph import (
    Builder,
    Const,
    Node,
    ShapeVal,
    Sym,
    Tensor,
    Value,
    op,
    shape_or_const,
)

_BIG = 2**62


def rank(v: Value) -> int:
    if isinstance(v, ShapeVal):
        return 0 if v.scalar else 1
    return v.val.dim()


def items_of(n: Node, v: Value | None, what: str) -> list[int | float | Sym]:
    """A 1-D shape-like input as a list of items (symbolic or not)."""
    if isinstance(v, ShapeVal):
        return list(v.items)
    if isinstance(v, Const):
        return v.val.reshape(-1).tolist()
    raise n.unsupported(f"{what} is computed from tensor values")


def axes_of(n: Node, index: int, since: int) -> list[int] | None:
    """``axes`` from an attribute (before opset ``since``) or from input ``index``."""
    if n.opset < since:
        axes = n.attrs.get("axes")
        return None if axes is None else list(axes)
    return n.ints(index, "axes")


def scalarize(v: Value, other_rank: int) -> Value | float | int | bool:
    """A one-element constant as a Python number when that keeps broadcasting unchanged."""
    if isinstance(v, Const) and v.val.numel() == 1 and v.val.dim() <= other_rank:
        return v.val.item()
    return v


# ---------------------------------------------------------------- pass-through and casts
@op("Identity", "Dropout")
def identity(b: Builder, n: Node) -> Value:
    return n.required(0, "the input")


_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
           16: torch.bfloat16}


@op("Cast")
def cast(b: Builder, n: Node) -> Value:
    dtype = _DTYPES.get(int(n.attrs["to"]))
    if dtype is None:
        raise n.unsupported(f"cast to ONNX type {int(n.attrs['to'])}")
    x = n.required(0, "the input")
    if isinstance(x, ShapeVal):
        floating = dtype.is_floating_point
        fn = float if floating else int
        return shape_or_const([b.sym(fn, i) for i in x.items], x.scalar, floating)
    return b.method("to", x, dtype)


@op("Constant")
def constant(b: Builder, n: Node) -> Value:
    a = n.attrs
    if "value" in a:
        return Const(a["value"])
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return Const(torch.tensor(a[key], dtype=dtype))
    raise n.unsupported("only tensor, float and int constants")


@op("ConstantOfShape")
def constant_of_shape(b: Builder, n: Node) -> Value:
    value = n.attrs.get("value")
    fill = torch.zeros(1) if value is None else value.reshape(-1)
    shape = items_of(n, n.inputs[0], "shape")
    return b.call(torch.full, shape, fill.item(), dtype=fill.dtype)


# ---------------------------------------------------------------- shapes
@op("Shape")
def shape(b: Builder, n: Node) -> Value:
    x = n.required(0, "the input")
    r = rank(x)
    start, end = int(n.attrs.get("start", 0)), n.attrs.get("end")
    dims = list(range(r))[start:None if end is None else int(end)]
    if isinstance(x, Const):
        return Const(torch.tensor([x.val.shape[i] for i in dims], dtype=torch.int64))
    if isinstance(x, ShapeVal):
        return Const(torch.tensor([] if x.scalar else [len(x.items)], dtype=torch.int64))
    return ShapeVal([b.size(x, i) for i in dims])


@op("Reshape")
def reshape(b: Builder, n: Node) -> Value:
    x = n.required(0, "the input")
    if isinstance(x, ShapeVal):
        raise n.unsupported("reshaping a computed shape")
    items = items_of(n, n.inputs[1], "the target shape")
    if not n.attrs.get("allowzero", 0):
        items = [(b.size(x, i) if isinstance(x, Tensor) else x.val.shape[i])
                 if isinstance(it, int) and it == 0 else it for i, it in enumerate(items)]
    if isinstance(x, Tensor) and _is_flatten(x, items):
        return b.call(torch.flatten, x, 1)
    return b.call(torch.reshape, x, items)


def _is_flatten(x: Tensor, items: list) -> bool:
    """``items`` keeps dim 0 and collapses the rest (what ``x.view(x.size(0), -1)`` emits)."""
    shape = x.val.shape
    if len(shape) < 2 or len(items) != 2:
        return False
    first, second = items
    rest = math.prod(shape[1:])
    if isinstance(second, Sym) or second not in (-1, rest):
        return False
    if isinstance(first, Sym):
        return first.dim == 0 and first.val == shape[0]
    return first == shape[0] or (first == -1 and second == rest)


@op("Flatten")
def flatten(b: Builder, n: Node) -> Value:
    x = n.required(0, "the input")
    axis = int(n.attrs.get("axis", 1)) % (rank(x) + 1) if rank(x) else 0
    if axis == 0:
        return b.call(torch.reshape, x, [1, -1])
    y = b.call(torch.flatten, x, axis)
    return y if axis == 1 else b.call(torch.flatten, y, 0, axis - 1)


@op("Squeeze")
def squeeze(b: Builder, n: Node) -> Value:
    x, axes = n.required(0, "the input"), axes_of(n, 1, 13)
    if isinstance(x, ShapeVal):
        if x.scalar or len(x.items) != 1:
            raise n.unsupported("squeezing a computed shape")
        return ShapeVal(x.items, scalar=True, floating=x.floating)
    if axes is None:
        return b.call(torch.squeeze, x)
    return b.call(torch.squeeze, x, tuple(a % rank(x) for a in axes))


@op("Unsqueeze")
def unsqueeze(b: Builder, n: Node) -> Value:
    x, axes = n.required(0, "the input"), axes_of(n, 1, 13)
    if axes is None:
        raise n.unsupported("Unsqueeze without axes")
    out_rank = rank(x) + len(axes)
    axes = sorted(a % out_rank for a in axes)
    if isinstance(x, ShapeVal):
        if not x.scalar or axes != [0]:
            raise n.unsupported("unsqueezing a computed shape")
        return ShapeVal(x.items, floating=x.floating)
    for a in axes:
        x = b.call(torch.unsqueeze, x, a)
    return x


@op("Transpose")
def transpose(b: Builder, n: Node) -> Value:
    x = n.required(0, "the input")
    perm = n.attrs.get("perm") or list(reversed(range(rank(x))))
    return b.call(torch.permute, x, tuple(int(p) for p in perm))


@op("Expand")
def expand(b: Builder, n: Node) -> Value:
    x = n.required(0, "the input")
    if isinstance(x, ShapeVal):
        raise n.unsupported("expanding a computed shape")
    items = items_of(n, n.inputs[1], "the target shape")
    shape = list(x.val.shape)
    offset = len(items) - len(shape)
    if offset < 0:
        raise n.unsupported("target shape of lower rank than the input")
    # ONNX broadcasts both ways; torch.expand keeps a dimension given as -1.
    items = [-1 if (not isinstance(it, Sym) and it == 1 and i >= offset) else it
             for i, it in enumerate(items)]
    return b.method("expand", x, *items)


@op("Concat")
def concat(b: Builder, n: Node) -> Value:
    vals = [v for v in n.inputs if v is not None]
    axis = int(n.attrs["axis"])
    if any(isinstance(v, ShapeVal) for v in vals):
        items: list = []
        for v in vals:
            items += items_of(n, v, "operand")
        floating = any(isinstance(v, ShapeVal) and v.floating for v in vals)
        return shape_or_const(items, floating=floating)
    # No ShapeVal is left here; ONNX allows empty inputs.
    tensors = [v for v in vals if not isinstance(v, ShapeVal)
               and (v.val.numel() or v.val.dim() != 1)]
    return b.call(torch.cat, tensors, axis % rank(tensors[0]))


@op("Gather")
def gather(b: Builder, n: Node) -> Value:
    x, idx = n.required(0, "the input"), n.required(1, "the indices")
    axis = int(n.attrs.get("axis", 0))
    if isinstance(x, ShapeVal):
        index = n.required_const(1, "the index into a shape")
        picked = [x.items[int(i)] for i in index.reshape(-1).tolist()]
        return shape_or_const(picked, scalar=index.dim() == 0, floating=x.floating)
    if isinstance(idx, ShapeVal):
        raise n.unsupported("indices computed from a shape")
    axis %= rank(x)
    if isinstance(idx, Const):
        i = torch.where(idx.val < 0, idx.val + x.val.shape[axis], idx.val)
        if i.dim() == 0:
            return b.call(torch.select, x, axis, int(i))
        if i.dim() == 1:
            return b.call(torch.index_select, x, axis, Const(i))
        raise n.unsupported("indices of rank above 1")
    if rank(idx) > 1:
        raise n.unsupported("indices of rank above 1")
    flat = b.call(torch.reshape, idx, [-1])
    out = b.call(torch.index_select, x, axis, flat)
    return out if rank(idx) == 1 else b.call(torch.squeeze, out, axis)


@op("Slice")
def slice_(b: Builder, n: Node) -> Value:
    x = n.required(0, "the input")
    if n.opset < 10:
        starts, ends = list(n.attrs["starts"]), list(n.attrs["ends"])
        axes, steps = n.attrs.get("axes"), None
    else:
        starts = items_of(n, n.inputs[1], "starts")
        ends = items_of(n, n.inputs[2], "ends")
        axes, steps = n.ints(3, "axes"), n.ints(4, "steps")
    r = rank(x)
    axes = [a % max(r, 1) for a in (axes or range(len(starts)))]
    steps = steps or [1] * len(starts)

    def bound(v):
        if isinstance(v, Sym):
            return v
        return None if v >= _BIG or v <= -_BIG else int(v)

    if isinstance(x, ShapeVal):
        if axes != [0] or any(isinstance(v, Sym) for v in starts + ends):
            raise n.unsupported("slicing a computed shape")
        s = slice(bound(starts[0]), bound(ends[0]), steps[0])
        return shape_or_const(x.items[s], floating=x.floating)
    index = [slice(None)] * r
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        index[a] = slice(bound(s), bound(e), None if st == 1 else st)
    if isinstance(x, Const) and not b.dynamic(index):
        return Const(torch.from_numpy(x.val.numpy()[tuple(index)].copy()))
    for a, st in zip(axes, steps, strict=True):
        if st < 0:  # torch slices forwards only: pick the elements by index
            if b.dynamic(index[a]):
                raise n.unsupported("a backward slice with computed bounds")
            picked = list(range(x.val.shape[a]))[index[a]]
            x = b.call(torch.index_select, x, a, Const(torch.tensor(picked)))
            index[a] = slice(None)
    while index and index[-1] == slice(None):
        index.pop()
    return b.call(operator.getitem, x, tuple(index))


@op("Split")
def split(b: Builder, n: Node) -> list[Value | None]:
    x = n.required(0, "the input")
    if isinstance(x, ShapeVal):
        raise n.unsupported("splitting a computed shape")
    axis = int(n.attrs.get("axis", 0)) % rank(x)
    sizes = n.ints(1, "split sizes") if n.opset >= 13 else n.attrs.get("split")
    count = int(n.attrs.get("num_outputs", n.outputs))
    dim = x.val.shape[axis]
    if sizes is None and dim % count == 0:
        parts = b.call(torch.chunk, x, count, axis)
    else:
        if sizes is None:
            step = -(-dim // count)
            sizes = [min(step, dim - k * step) for k in range(count)]
        parts = b.call(torch.split, x, [int(s) for s in sizes], axis)
    return [b.call(operator.getitem, parts, k) for k in range(count)]


_REDUCE: dict[str, Callable[..., torch.Tensor]] = {
    "ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax,
    "ReduceMin": torch.amin}


@op(*_REDUCE)
def reduce(b: Builder, n: Node) -> Value:
    x = n.required(0, "the input")
    if isinstance(x, ShapeVal):
        raise n.unsupported("reducing a computed shape")
    axes = axes_of(n, 1, 13 if n.op == "ReduceSum" else 18)
    keep = bool(n.attrs.get("keepdims", 1))
    if not axes:
        if n.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(rank(x)))
    dims = tuple(sorted(a % rank(x) for a in axes))
    return b.call(_REDUCE[n.op], x, dims, keepdim=keep)
