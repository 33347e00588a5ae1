"""Structured channel pruning on Torch-Pruning's dependency graph.

Importance: first-order Taylor (|w * dL/dw| summed over each coupled group, from
calibration batches) or L1 magnitude. Every coupled group (residual adds, concats,
depthwise convolutions) is pruned as one unit by Torch-Pruning, so shapes stay
consistent. How many channels each group keeps is decided by ``search.allocate``.

Grouped convolutions (``groups`` > 1, not depthwise) keep whole groups: a coupled set
that passes through one is scored per position within a convolution group (the scores of
that position summed over the groups) and pruned at the same positions in every group, so
a kept count is a multiple of the number of groups (as Torch-Pruning's own pruners do).
A set whose channels do not map one to one onto the grouped convolution's (a concat in
between) is left unpruned, with a warning in the log.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from hadmc_core.config import PruneConfig
from hadmc_core.data import Split
from hadmc_core.errors import HadmcError
from hadmc_core.hal.latency import LayerGeom
from hadmc_core.progress import ProgressFn, no_progress
from hadmc_core.train import batches

log = logging.getLogger(__name__)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Layer:
    name: str
    geom: LayerGeom
    cin: int
    cout: int


@dataclass
class Group:
    """One coupled set of channels that is pruned together."""

    root: str                    # name of the root module
    handler: Callable            # Torch-Pruning pruning function of the root
    channels: int
    order: list[int]             # channel indices, least important first
    scores: list[float]          # scores sorted ascending (same order)
    outs: dict[str, int] = field(default_factory=dict)  # layer -> channels of its cout
    ins: dict[str, int] = field(default_factory=dict)   # layer -> channels of its cin
    ch_groups: int = 1           # convolution groups the channels pass through (kept whole)

    def keepable(self, k: int) -> int:
        """``k`` rounded down to whole convolution groups (at least one channel each)."""
        k = min(k, self.channels)
        if self.ch_groups <= 1:
            return k
        return max(self.ch_groups, k // self.ch_groups * self.ch_groups)

    def removed(self, k: int) -> list[int]:
        """The channel indices pruning removes to keep ``k``: the least important ones,
        in ascending index order (what ``apply`` hands Torch-Pruning)."""
        return sorted(self.order[: max(self.channels - k, 0)])

    def kept(self, k: int) -> list[int]:
        """The original channel indices left after keeping ``k``, in their order."""
        removed = set(self.removed(k))
        return [i for i in range(self.channels) if i not in removed]


def layer_table(model: nn.Module, example: torch.Tensor) -> dict[str, Layer]:
    """Conv and linear layers with their input sizes, from one forward pass."""
    table: dict[str, Layer] = {}
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            x = inp[0]
            if isinstance(mod, nn.Conv2d):
                dw = mod.groups > 1 and mod.groups == mod.in_channels
                geom = LayerGeom("dwconv" if dw else "conv", mod.kernel_size[0],
                                 mod.stride[0], int(x.shape[2]), int(x.shape[3]))
                table[name] = Layer(name, geom, int(mod.in_channels), int(mod.out_channels))
            else:
                assert isinstance(mod, nn.Linear)
                table[name] = Layer(name, LayerGeom("linear"), mod.in_features,
                                    mod.out_features)
        return fn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d | nn.Linear):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(example)
    model.train(was_training)
    for h in hooks:
        h.remove()
    return table


def _graph(model: nn.Module, example: torch.Tensor,
           head: str | list[str] | None) -> tuple[tp.DependencyGraph, list]:
    """Torch-Pruning's groups, the head (the layer or layers that produce the outputs)
    left whole."""
    from hadmc_core.tasks.graph import find_head

    head = head if head is not None else find_head(model, example)
    if head is None:
        raise HadmcError("no output layer (a module with a weight) was found on the path to "
                         "the model's output, so pruning could change the output's width; "
                         "switch pruning off (prune.enabled: false)")
    modules = dict(model.named_modules())
    ignored = [modules[h] for h in ([head] if isinstance(head, str) else head)]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = list(dg.get_all_groups(ignored_layers=ignored,
                                    root_module_types=[nn.Conv2d, nn.Linear]))
    return dg, groups


def _is_grouped(mod: nn.Module) -> bool:
    return (isinstance(mod, nn.Conv2d) and mod.groups > 1
            and not mod.groups == mod.in_channels == mod.out_channels)


def _channel_groups(g: Any, channels: int) -> int | None:
    """Convolution groups the coupled set ``g`` passes through: 1 when none, ``None`` when
    its channels are not the grouped convolution's own, one to one (cannot keep groups)."""
    ch_groups = 1
    for dep, idxs in g:
        mod, fn = dep.target.module, dep.handler.__name__
        if not _is_grouped(mod):
            continue
        n = mod.out_channels if "out_channels" in fn else mod.in_channels
        if n != channels or sorted(int(i) for i in idxs) != list(range(n)):
            return None
        ch_groups = max(ch_groups, int(mod.groups))
    return ch_groups if channels % ch_groups == 0 else None


def _per_position(scores: torch.Tensor, ch_groups: int) -> tuple[list[int], list[float]]:
    """Order and scores pruning the same positions in every group: position p's channels
    (p, p + size, ...) come together, ranked by their summed score; each carries the
    mean, so the scores of a pruned prefix sum to the channels' own."""
    size = len(scores) // ch_groups
    per = scores.reshape(ch_groups, size)
    ranked = torch.argsort(per.sum(0)).tolist()
    order = [p + j * size for p in ranked for j in range(ch_groups)]
    mean = per.mean(0)
    return order, [float(mean[p]) for p in ranked for _ in range(ch_groups)]


def _accumulate_gradients(model: nn.Module, data: Split, cfg: PruneConfig,
                          progress: ProgressFn, loss: LossFn) -> None:
    model.eval()
    model.zero_grad()
    device = next(model.parameters()).device
    limit = cfg.calib_batches * cfg.batch_size
    for i, (x, y) in enumerate(batches(data, cfg.batch_size, True, seed=1, limit=limit)):
        loss(model(x.to(device)), y.to(device)).backward()
        progress("sensitivity", i + 1, cfg.calib_batches)


def analyze(model: nn.Module, data: Split, cfg: PruneConfig, example: torch.Tensor,
            progress: ProgressFn = no_progress, *, loss: LossFn = F.cross_entropy,
            head: str | list[str] | None = None) -> tuple[list[Group], dict[str, Layer]]:
    """Score every channel of every prunable group (on a copy; ``model`` is untouched).

    ``loss(outputs, targets)`` drives the Taylor importance (the task's loss); ``head`` is
    the output layer, never pruned (found from the graph when not given).
    """
    work = copy.deepcopy(model).cpu()
    names = {m: n for n, m in work.named_modules()}
    if cfg.importance == "taylor":
        _accumulate_gradients(work, data, cfg, progress, loss)
        imp = tp.importance.GroupTaylorImportance(group_reduction="sum", normalizer=None)
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=1, group_reduction="sum",
                                                     normalizer=None)
    _dg, raw_groups = _graph(work, example, head)
    layers = layer_table(work, example)
    groups: list[Group] = []
    for g in raw_groups:
        scores = imp(g)
        if scores is None:
            continue
        root_dep = g[0].dep
        root = names[root_dep.target.module]
        ch_groups = _channel_groups(g, len(scores))
        if ch_groups is None:
            log.warning("channels of %s left unpruned: they reach a grouped convolution "
                        "through a concat or a slice, so whole groups cannot be kept", root)
            continue
        if ch_groups > 1:
            order, sorted_scores = _per_position(scores.detach().cpu(), ch_groups)
        else:
            order = torch.argsort(scores).tolist()
            sorted_scores = [float(scores[i]) for i in order]
        grp = Group(root, root_dep.handler, len(order), order, sorted_scores,
                    ch_groups=ch_groups)
        for dep, idxs in g:
            mod, fn = dep.target.module, dep.handler.__name__
            lname = names.get(mod)
            if lname not in layers:
                continue
            if "out_channels" in fn or "out_features" in fn:
                grp.outs[lname] = len(idxs)
            elif "in_channels" in fn or "in_features" in fn:
                grp.ins[lname] = len(idxs)
        groups.append(grp)
    work.zero_grad(set_to_none=True)
    return groups, layers


def apply(model: nn.Module, groups: list[Group], keep: dict[str, int],
          example: torch.Tensor) -> nn.Module:
    """Return a pruned copy of ``model`` keeping ``keep[root]`` channels of each group."""
    pruned = copy.deepcopy(model).cpu().eval()
    modules = dict(pruned.named_modules())
    dg = tp.DependencyGraph().build_dependency(pruned, example_inputs=example)
    for grp in groups:
        k = grp.keepable(keep.get(grp.root, grp.channels))
        if k >= grp.channels:
            continue
        group = dg.get_pruning_group(modules[grp.root], grp.handler, idxs=grp.removed(k))
        if dg.check_pruning_group(group):
            group.prune()
        else:
            log.warning("group %s could not be pruned; kept whole", grp.root)
    return pruned


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of conv and linear layers at the example's batch size 1."""
    return sum(layer.geom.macs(layer.cin, layer.cout) for layer in
               layer_table(model, example[:1]).values())
