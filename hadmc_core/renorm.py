"""BatchNorm back into a network whose normalization was folded away, before it trains.

An ONNX file exported from PyTorch in inference mode has every BatchNorm folded into the
convolution before it, so the module converted back from it has no normalization layer.
Such a network does not survive the fine-tuning a pruned candidate gets: measured on a
ResNeXt converted from ONNX (90.5 % top-1 on Fashion-MNIST), one epoch of plain SGD at
the recovery learning rate (0.02) took the *unpruned* model to 15.7 %, and every pruned
candidate of a compression job ended at chance; at a tenth of the rate the unpruned model
kept its accuracy but a pruned one did not recover (7.8 %).

So before anything trains, each convolution of such a network gets a BatchNorm after it
whose running statistics are the convolution's output statistics on calibration images
and whose affine parameters undo them (``weight = sqrt(var + eps)``, ``bias = mean``): in
inference mode the network computes what it did (the layer is the identity), in training
mode it normalizes by the batch as the original network did, and pruning removes the
BatchNorm's channels with the convolution's. Fusion folds every one of them back into its
convolution before export (``hadmc_core.fuse.fold_batchnorm``), so the artifact has no
layer the source did not have.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import fx, nn

log = logging.getLogger(__name__)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
         nn.InstanceNorm2d)
#: BatchNorm modules added here are named after their convolution plus this suffix.
SUFFIX = "_bn"


def needs_norm(model: nn.Module) -> bool:
    """A traced graph (a converted ONNX model) with convolutions and no normalization."""
    mods = list(model.modules())
    return (isinstance(model, fx.GraphModule) and any(isinstance(m, nn.Conv2d) for m in mods)
            and not any(isinstance(m, NORMS) for m in mods))


def restore_batchnorm(model: fx.GraphModule, x: np.ndarray, eps: float = 1e-5) -> int:
    """Insert an identity-initialized BatchNorm2d after every Conv2d call of ``model`` (in
    place; module doc), with statistics from the images ``x``; returns how many."""
    modules = dict(model.named_modules())
    convs = [n for n in model.graph.nodes
             if n.op == "call_module" and isinstance(modules.get(n.target), nn.Conv2d)]
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def fn(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            y = out.detach().double()
            stats[name] = (y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False))
        return fn

    hooks = [modules[str(n.target)].register_forward_hook(hook(str(n.target))) for n in convs]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    added = 0
    for node in convs:
        name = str(node.target)
        if name not in stats:  # not reached on this input
            continue
        conv = modules[name]
        mean, var = stats[name]
        bn = nn.BatchNorm2d(conv.out_channels, eps=eps).to(conv.weight.device)
        assert bn.running_mean is not None and bn.running_var is not None
        with torch.no_grad():
            bn.running_mean.copy_(mean.float())
            bn.running_var.copy_(var.float())
            bn.weight.copy_(torch.sqrt(var + eps).float())
            bn.bias.copy_(mean.float())
        target = name + SUFFIX
        model.add_submodule(target, bn)
        with model.graph.inserting_after(node):
            new = model.graph.call_module(target, (node,))
        node.replace_all_uses_with(
            new, delete_user_cb=lambda user, bn_node=new: user is not bn_node)
        added += 1
    model.graph.lint()
    model.recompile()
    log.info("restored %d BatchNorm layers (identity at inference) in a network without "
             "normalization, so that it can be fine-tuned", added)
    return added
