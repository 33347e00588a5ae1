"""Operator fusion: fold BatchNorm into the preceding convolution before export.

Conv -> BN pairs are found by tracing the model with torch.fx, so any architecture of
the zoo (or a plugin) is handled, not only known module names. ReLU is fused by ONNX
Runtime at session creation (Conv+Relu, QLinearConv with a fused activation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


@dataclass
class FusionResult:
    model: nn.Module
    fused_pairs: int
    max_abs_diff: float
    #: largest magnitude of the original model's outputs on the example (what the
    #: difference is judged against: a detector outputs pixels, a classifier logits)
    output_scale: float = 1.0

    def within(self, tolerance: float) -> bool:
        """Whether the outputs moved by at most ``tolerance`` of their scale (absolute
        for outputs under 1)."""
        return self.max_abs_diff <= tolerance * max(1.0, self.output_scale)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> FusionResult:
    """Return a copy with every Conv2d->BatchNorm2d pair folded, its max abs diff and the
    scale of the outputs that diff is judged against."""
    src = copy.deepcopy(model).cpu().eval()
    gm = fx.symbolic_trace(src)
    modules = dict(gm.named_modules())
    fused = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module"
                and isinstance(modules.get(prev.target), nn.Conv2d)
                and len(prev.users) == 1):
            continue
        conv, bn = modules[str(prev.target)], modules[str(node.target)]
        new_conv = fuse_conv_bn_eval(conv, bn)
        _set_module(gm, str(prev.target), new_conv)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        fused += 1
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    with torch.no_grad():
        ref = src(example)
        diff = (gm(example) - ref).abs().max().item()
        scale = ref.abs().max().item() if ref.numel() else 0.0
    return FusionResult(gm, fused, float(diff), float(scale))


def _set_module(root: nn.Module, target: str, new: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, new)
