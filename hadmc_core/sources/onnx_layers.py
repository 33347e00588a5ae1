"""ONNX operators with weights or windows: convolutions, linear layers, normalization,
pooling, padding and resizing. Weights go into real ``nn`` modules so that pruning sees them.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from hadmc_core.sources.onnx_graph import Builder, Const, Node, ShapeVal, Sym, Tensor, Value, op
from hadmc_core.sources.onnx_shapes import items_of, rank

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_IN = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}


def _fill(mod: nn.Module, **tensors: torch.Tensor | None) -> nn.Module:
    with torch.no_grad():
        for name, t in tensors.items():
            if t is not None:
                getattr(mod, name).copy_(t.reshape(getattr(mod, name).shape))
    return mod


def _tensor_input(n: Node) -> Tensor:
    x = n.inputs[0]
    if not isinstance(x, Tensor):
        raise n.unsupported("the input must be computed by the graph")
    return x


def _window(n: Node, x: Tensor | Const,
            kernel: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    """strides, dilations, pads at the start and pads at the end of each spatial dim."""
    k = len(kernel)
    strides = list(n.attrs.get("strides") or [1] * k)
    dilations = list(n.attrs.get("dilations") or [1] * k)
    auto = n.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(n.attrs.get("pads") or [0] * (2 * k))
        return strides, dilations, pads[:k], pads[k:]
    if auto == "VALID":
        return strides, dilations, [0] * k, [0] * k
    begin, end = [], []
    for i in range(k):
        size = x.val.shape[2 + i]
        out = -(-size // strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return strides, dilations, begin, end


def _pad_arg(begin: list[int], end: list[int]) -> list[int]:
    """F.pad's argument for trailing dims: last dim first, (start, end) each."""
    out: list[int] = []
    for lo, hi in zip(reversed(begin), reversed(end), strict=True):
        out += [lo, hi]
    return out


# ---------------------------------------------------------------- convolutions
@op("Conv")
def conv(b: Builder, n: Node) -> Value:
    x: Tensor | Const = _tensor_input(n)
    w, bias = n.required_const(1, "the Conv weight"), n.const(2, "the Conv bias")
    k = w.dim() - 2
    if k not in _CONV:
        raise n.unsupported(f"{k}-D convolution")
    kernel = list(w.shape[2:])
    strides, dilations, begin, end = _window(n, x, kernel)
    if begin != end:
        x = b.call(F.pad, x, _pad_arg(begin, end))
        begin = [0] * k
    groups = int(n.attrs.get("group", 1))
    mod = torch.nn.utils.skip_init(
        _CONV[k], w.shape[1] * groups, w.shape[0], tuple(kernel), tuple(strides),
        tuple(begin), tuple(dilations), groups, bias=bias is not None, dtype=w.dtype)
    return b.module(_fill(mod, weight=w, bias=bias), n, x)


@op("ConvTranspose")
def conv_transpose(b: Builder, n: Node) -> Value:
    x = _tensor_input(n)
    w = n.required_const(1, "the ConvTranspose weight")
    bias = n.const(2, "the ConvTranspose bias")
    k = w.dim() - 2
    if k not in _CONV_T:
        raise n.unsupported(f"{k}-D transposed convolution")
    if "output_shape" in n.attrs or n.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "",
                                                                             "VALID"):
        raise n.unsupported("output_shape or auto_pad SAME")
    groups = int(n.attrs.get("group", 1))
    strides = list(n.attrs.get("strides") or [1] * k)
    dilations = list(n.attrs.get("dilations") or [1] * k)
    pads = list(n.attrs.get("pads") or [0] * (2 * k))
    out_pad = list(n.attrs.get("output_padding") or [0] * k)
    begin, end = pads[:k], pads[k:]
    sym = begin == end
    mod = torch.nn.utils.skip_init(
        _CONV_T[k], w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), tuple(strides),
        tuple(begin if sym else [0] * k), tuple(out_pad), groups, bias=bias is not None,
        dilation=tuple(dilations), dtype=w.dtype)
    y = b.module(_fill(mod, weight=w, bias=bias), n, x)
    if sym:
        return y
    crop = [slice(None), slice(None)] + [slice(lo, -hi if hi else None)
                                         for lo, hi in zip(begin, end, strict=True)]
    return b.call(operator.getitem, y, tuple(crop))


# ---------------------------------------------------------------- linear layers
def _linear(b: Builder, n: Node, x: Value, weight: torch.Tensor,
            bias: torch.Tensor | None) -> Tensor:
    """nn.Linear with ``weight`` (out, in)."""
    mod = torch.nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0],
                                   bias=bias is not None, dtype=weight.dtype)
    return b.module(_fill(mod, weight=weight, bias=bias), n, x)


@op("Gemm")
def gemm(b: Builder, n: Node) -> Value:
    a, bm, c = n.required(0, "input A"), n.required(1, "input B"), n.input(2)
    alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
    if n.attrs.get("transA", 0):
        a = b.call(torch.t, a)
    if not isinstance(bm, Const) or not isinstance(a, Tensor):
        y = b.call(torch.matmul, a, b.call(torch.t, bm) if n.attrs.get("transB", 0) else bm)
        y = y if alpha == 1.0 else b.call(operator.mul, y, alpha)
        if c is None:
            return y
        return b.call(operator.add, y, c if beta == 1.0 else b.call(operator.mul, c, beta))
    w = bm.val if n.attrs.get("transB", 0) else bm.val.t()
    w = w * alpha if alpha != 1.0 else w
    bias = None
    if isinstance(c, Const) and c.val.numel() in (1, w.shape[0]):
        bias = (c.val * beta).reshape(-1).expand(w.shape[0]).clone()
        c = None
    y = _linear(b, n, a, w.contiguous(), bias)
    if c is None:
        return y
    return b.call(operator.add, y, c if beta == 1.0 else b.call(operator.mul, c, beta))


@op("MatMul")
def matmul(b: Builder, n: Node) -> Value:
    a, w = n.inputs[0], n.inputs[1]
    if isinstance(a, Tensor) and isinstance(w, Const) and w.val.dim() == 2:
        bias = n.extra.get("bias")
        return _linear(b, n, a, w.val.t().contiguous(), bias)
    return b.call(torch.matmul, a, w)


# ---------------------------------------------------------------- normalization
@op("BatchNormalization")
def batch_norm(b: Builder, n: Node) -> Value:
    x = _tensor_input(n)
    if n.attrs.get("training_mode", 0) or not n.attrs.get("spatial", 1):
        raise n.unsupported("training mode or non-spatial batch normalization")
    scale, shift = n.required_const(1, "the scale"), n.required_const(2, "the bias")
    mean = n.required_const(3, "the running mean")
    var = n.required_const(4, "the running variance")
    if rank(x) not in _BN:
        raise n.unsupported(f"input of rank {rank(x)}")
    mod = torch.nn.utils.skip_init(_BN[rank(x)], scale.numel(),
                                   eps=float(n.attrs.get("epsilon", 1e-5)), dtype=scale.dtype)
    _fill(mod, weight=scale, bias=shift, running_mean=mean, running_var=var)
    mod.num_batches_tracked.zero_()
    return b.module(mod, n, x)


@op("InstanceNormalization")
def instance_norm(b: Builder, n: Node) -> Value:
    x = _tensor_input(n)
    scale, shift = n.required_const(1, "the scale"), n.required_const(2, "the bias")
    if rank(x) not in _IN:
        raise n.unsupported(f"input of rank {rank(x)}")
    mod = torch.nn.utils.skip_init(_IN[rank(x)], scale.numel(), affine=True,
                                   eps=float(n.attrs.get("epsilon", 1e-5)), dtype=scale.dtype)
    return b.module(_fill(mod, weight=scale, bias=shift), n, x)


@op("LayerNormalization")
def layer_norm(b: Builder, n: Node) -> Value:
    x = _tensor_input(n)
    axis = int(n.attrs.get("axis", -1)) % rank(x)
    shape = tuple(x.val.shape[axis:])
    scale, shift = n.required_const(1, "the scale"), n.const(2, "the bias")
    if scale.numel() != math.prod(shape):
        raise n.unsupported("a scale that does not cover the normalized dims")
    mod = torch.nn.utils.skip_init(nn.LayerNorm, shape, eps=float(n.attrs.get("epsilon", 1e-5)),
                                   bias=shift is not None, dtype=scale.dtype)
    return b.module(_fill(mod, weight=scale, bias=shift), n, x)


@op("PRelu")
def prelu(b: Builder, n: Node) -> Value:
    x = _tensor_input(n)
    slope = n.required_const(1, "the PRelu slope")
    channels = x.val.shape[1] if rank(x) > 1 else 1
    aligned = [1] * (rank(x) - slope.dim()) + list(slope.shape)
    per_channel = len(aligned) == rank(x) > 1 and aligned[1] == channels and \
        math.prod(aligned) == channels
    if slope.numel() != 1 and not per_channel:
        raise n.unsupported("a slope that is neither one value nor one per channel")
    mod = nn.PReLU(slope.numel())
    return b.module(_fill(mod, weight=slope.float()), n, x)


# ---------------------------------------------------------------- pooling
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_GAP = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_GMP = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


@op("MaxPool", "AveragePool")
def pool(b: Builder, n: Node) -> list[Value | None]:
    x: Tensor | Const = _tensor_input(n)
    kernel = list(n.attrs["kernel_shape"])
    k = len(kernel)
    if k not in _MAX:
        raise n.unsupported(f"{k}-D pooling")
    strides, dilations, begin, end = _window(n, x, kernel)
    ceil = bool(n.attrs.get("ceil_mode", 0))
    too_big = any(p > kk // 2 for p, kk in zip(begin, kernel, strict=True))
    if n.op == "MaxPool":
        if begin != end or too_big:
            x = b.call(F.pad, x, _pad_arg(begin, end), value=-math.inf)
            begin = [0] * k
        return [b.call(_MAX[k], x, kernel, strides, begin, dilations, ceil_mode=ceil), None]
    if any(d != 1 for d in dilations):
        raise n.unsupported("dilated average pooling")
    include = bool(n.attrs.get("count_include_pad", 0))
    if begin != end or too_big:
        if not include and any(begin + end):
            raise n.unsupported("asymmetric padding that is left out of the average")
        x = b.call(F.pad, x, _pad_arg(begin, end))
        begin = [0] * k
    return [b.call(_AVG[k], x, kernel, strides, begin, ceil_mode=ceil,
                   count_include_pad=include)]


@op("GlobalAveragePool", "GlobalMaxPool")
def global_pool(b: Builder, n: Node) -> Value:
    x = _tensor_input(n)
    table = _GAP if n.op == "GlobalAveragePool" else _GMP
    if rank(x) - 2 not in table:
        raise n.unsupported(f"input of rank {rank(x)}")
    return b.call(table[rank(x) - 2], x, 1)


# ---------------------------------------------------------------- padding and resizing
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
              "wrap": "circular"}


@op("Pad")
def pad(b: Builder, n: Node) -> Value:
    x = _tensor_input(n)
    mode = n.attrs.get("mode", "constant")
    if mode not in _PAD_MODES:
        raise n.unsupported(f"pad mode {mode!r}")
    r = rank(x)
    if n.opset < 11:
        pads, value, axes = list(n.attrs["pads"]), float(n.attrs.get("value", 0.0)), None
    else:
        pads = n.required_ints(1, "pads")
        v = n.const(2, "the pad value")
        value = 0.0 if v is None else v.item()
        axes = n.ints(3, "axes")
    axes = [a % r for a in (axes if axes is not None else range(r))]
    begin, end = [0] * r, [0] * r
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[len(axes) + i]
    first = next((i for i in range(r) if begin[i] or end[i]), r)
    if first == r:
        return x
    arg = _pad_arg(begin[first:], end[first:])
    if mode != "constant":
        return b.call(F.pad, x, arg, mode=_PAD_MODES[mode])
    return b.call(F.pad, x, arg, value=value)


_LINEAR = {3: "linear", 4: "bilinear", 5: "trilinear"}


def _resize_mode(n: Node, r: int, factors: list[float]) -> tuple[str, bool | None]:
    """F.interpolate's mode and align_corners matching the node's sampling."""
    default_ctm = "half_pixel" if n.op == "Resize" and n.opset >= 11 else "asymmetric"
    ctm = n.attrs.get("coordinate_transformation_mode", default_ctm)
    mode = n.attrs.get("mode", "nearest")
    if mode == "nearest":
        nearest = n.attrs.get("nearest_mode", "round_prefer_floor")
        if n.op == "Upsample" or n.opset < 11 or (ctm == "asymmetric" and nearest == "floor"):
            return "nearest", None
        whole = all(f >= 1 and float(f).is_integer() for f in factors)
        if ctm in ("half_pixel", "pytorch_half_pixel") and (
                nearest == "round_prefer_ceil" or whole):
            return "nearest-exact", None
    elif mode in ("linear", "bilinear") and r in _LINEAR:
        if ctm == "align_corners":
            return _LINEAR[r], True
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return _LINEAR[r], False
    elif mode == "cubic" and r == 4 and ctm in ("half_pixel", "pytorch_half_pixel") \
            and abs(float(n.attrs.get("cubic_coeff_a", -0.75)) + 0.75) < 1e-6:
        return "bicubic", False
    raise n.unsupported(f"{mode} resizing with {ctm} coordinates")


@op("Resize", "Upsample")
def resize(b: Builder, n: Node) -> Value:
    x = _tensor_input(n)
    r = rank(x)
    if n.attrs.get("antialias", 0) or n.attrs.get("axes") or \
            n.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise n.unsupported("antialias, axes or keep_aspect_ratio_policy")
    scales: torch.Tensor | None
    sizes: Value | None
    if n.op == "Upsample" and n.opset < 9:
        scales, sizes = torch.tensor(n.attrs["scales"]), None
    elif n.op == "Upsample" or n.opset == 10:
        scales, sizes = n.const(1, "the scales"), None
    else:
        scales = n.const(2, "the scales")
        sizes = n.input(3)
    if scales is not None and scales.numel():
        s = [float(v) for v in scales.tolist()]
        if len(s) != r or s[0] != 1 or s[1] != 1:
            raise n.unsupported("resizing the batch or channel dimension")
        mode, corners = _resize_mode(n, r, s[2:])
        return b.call(F.interpolate, x, scale_factor=s[2:], mode=mode, align_corners=corners)
    if sizes is None:
        raise n.unsupported("neither scales nor sizes")
    items = items_of(n, sizes, "sizes")
    if len(items) != r or any(not isinstance(i, Sym) and i != x.val.shape[d]
                              for d, i in enumerate(items[:2])):
        raise n.unsupported("resizing the batch or channel dimension")
    out = [int(i.val if isinstance(i, Sym) else i) for i in items[2:]]
    mode, corners = _resize_mode(n, r, [o / s for o, s in zip(out, x.val.shape[2:],
                                                             strict=True)])
    return b.call(F.interpolate, x, size=ShapeVal(items[2:]) if any(
        isinstance(i, Sym) for i in items[2:]) else out, mode=mode, align_corners=corners)
