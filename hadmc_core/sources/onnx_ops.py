"""ONNX operators without weights: element-wise math and activations."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from hadmc_core.sources.onnx_graph import (
    Builder,
    Const,
    Node,
    ShapeVal,
    Value,
    op,
    shape_or_const,
)
from hadmc_core.sources.onnx_shapes import items_of, rank, scalarize

# ---------------------------------------------------------------- element-wise math
_BINARY: dict[str, Callable[..., Any]] = {
    "Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv,
    "Pow": torch.pow}


def _shape_binary(b: Builder, n: Node, x: Value, y: Value) -> Value:
    xs, ys = (items_of(n, v, "operand") for v in (x, y))
    if len(xs) != len(ys):
        xs, ys = (xs * len(ys), ys) if len(xs) == 1 else (xs, ys * len(xs))
    floating = any(isinstance(v, ShapeVal) and v.floating for v in (x, y)) or any(
        isinstance(v, Const) and v.val.is_floating_point() for v in (x, y))
    fn = _BINARY[n.op]
    if n.op == "Div" and not floating:
        fn = operator.floordiv
    scalar = all(rank(v) == 0 for v in (x, y))
    return shape_or_const([b.sym(fn, p, q) for p, q in zip(xs, ys, strict=True)],
                          scalar, floating)


@op("Add", "Sub", "Mul", "Div", "Pow")
def binary(b: Builder, n: Node) -> Value:
    x, y = n.required(0, "the first operand"), n.required(1, "the second operand")
    if isinstance(x, ShapeVal) or isinstance(y, ShapeVal):
        return _shape_binary(b, n, x, y)
    integer = not (x.val.is_floating_point() or y.val.is_floating_point())
    if n.op == "Div" and integer:
        return b.call(torch.div, x, y, rounding_mode="trunc")
    fn = _BINARY[n.op]
    return b.call(fn, scalarize(x, rank(y)), scalarize(y, rank(x)))


@op("Sum", "Max", "Min", "Mean")
def variadic(b: Builder, n: Node) -> Value:
    fn = {"Sum": operator.add, "Mean": operator.add, "Max": torch.maximum,
          "Min": torch.minimum}[n.op]
    vals = [v for v in n.inputs if v is not None]
    if any(isinstance(v, ShapeVal) for v in vals):
        raise n.unsupported("shape arithmetic")
    out = vals[0]
    for v in vals[1:]:
        out = b.call(fn, out, v)
    return b.call(operator.truediv, out, float(len(vals))) if n.op == "Mean" else out


_UNARY = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Abs": torch.abs, "Neg": torch.neg,
    "Erf": torch.erf, "Reciprocal": torch.reciprocal, "Floor": torch.floor,
    "Ceil": torch.ceil, "Sin": torch.sin, "Cos": torch.cos, "Softplus": F.softplus,
    "Softsign": F.softsign, "HardSwish": F.hardswish, "Mish": F.mish, "Sign": torch.sign,
}
_SHAPE_UNARY: dict[str, Callable[..., Any]] = {
    "Floor": math.floor, "Ceil": math.ceil, "Neg": operator.neg, "Abs": abs, "Sqrt": math.sqrt}


@op(*_UNARY)
def unary(b: Builder, n: Node) -> Value:
    x = n.inputs[0]
    if isinstance(x, ShapeVal):
        if n.op not in _SHAPE_UNARY:
            raise n.unsupported("shape arithmetic")
        fn = _SHAPE_UNARY[n.op]
        floating = x.floating and n.op not in ("Floor", "Ceil")
        return shape_or_const([b.sym(fn, i) for i in x.items], x.scalar, floating)
    return b.call(_UNARY[n.op], x)


@op("LeakyRelu")
def leaky_relu(b: Builder, n: Node) -> Value:
    return b.call(F.leaky_relu, n.inputs[0], float(n.attrs.get("alpha", 0.01)))


@op("Elu")
def elu(b: Builder, n: Node) -> Value:
    return b.call(F.elu, n.inputs[0], float(n.attrs.get("alpha", 1.0)))


@op("Selu")
def selu(b: Builder, n: Node) -> Value:
    alpha, gamma = float(n.attrs.get("alpha", 1.67326)), float(n.attrs.get("gamma", 1.0507))
    if abs(alpha - 1.6732632) > 1e-5 or abs(gamma - 1.0507010) > 1e-5:
        raise n.unsupported("Selu with non-default alpha or gamma")
    return b.call(torch.selu, n.inputs[0])


@op("Gelu")
def gelu(b: Builder, n: Node) -> Value:
    approximate = "tanh" if n.attrs.get("approximate", "none") == "tanh" else "none"
    return b.call(F.gelu, n.inputs[0], approximate=approximate)


@op("HardSigmoid")
def hard_sigmoid(b: Builder, n: Node) -> Value:
    alpha, beta = float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))
    x = n.inputs[0]
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        return b.call(F.hardsigmoid, x)
    return b.call(torch.clamp, b.call(operator.add, b.call(operator.mul, x, alpha), beta),
                  0.0, 1.0)


@op("Clip")
def clip(b: Builder, n: Node) -> Value:
    if n.opset < 11:
        lo, hi = n.attrs.get("min"), n.attrs.get("max")
    else:
        lo_t, hi_t = n.const(1, "Clip min"), n.const(2, "Clip max")
        lo = None if lo_t is None else lo_t.item()
        hi = None if hi_t is None else hi_t.item()
    x = n.required(0, "the input")
    if isinstance(x, ShapeVal):
        raise n.unsupported("clipping a computed shape")
    if lo == 0 and hi == 6:
        return b.call(F.relu6, x)
    if lo == 0 and hi is None:
        return b.call(torch.relu, x)
    if lo is not None and hi is not None and x.val.is_floating_point():
        return b.call(F.hardtanh, x, float(lo), float(hi))
    return b.call(torch.clamp, x, lo, hi)


@op("Softmax", "LogSoftmax")
def softmax(b: Builder, n: Node) -> Value:
    x = n.required(0, "the input")
    fn = torch.softmax if n.op == "Softmax" else torch.log_softmax
    r = rank(x)
    axis = int(n.attrs.get("axis", -1 if n.opset >= 13 else 1)) % r
    if n.opset >= 13 or axis == r - 1:
        return b.call(fn, x, axis)
    # Before opset 13 the input is coerced to 2-D at ``axis``.
    y = b.call(fn, b.call(torch.flatten, x, axis), -1)
    return b.method("view_as", y, x)
