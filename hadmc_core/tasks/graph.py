"""Where a model's graph ends and where its stages are, found without knowing the model.

Head: the last weight layer on every path to the output. The model is traced with
``torch.fx``; from the output node the search walks back through operations and modules
without a weight matrix (pooling, flatten, activations, normalisation) and stops at the
first module that has a ``weight`` of two or more dimensions (``nn.Linear``, a 1x1
``nn.Conv2d``, ...). When tracing fails (data-dependent control flow), the head is the last
such module to run in one forward pass.

Feature points (distillation alignment when the model declares no ``feature_stages()``)
must be module names, since distillation reads them with forward hooks; a ``torch.fx``
trace flattens blocks into leaf calls and functions, so the points come from execution
instead: one forward pass with hooks on every submodule records, in the order they finish, the
modules whose output is a 4-D feature map (N, C, H, W) larger than 1x1 (a globally pooled
vector is not a map), stopping when the head starts.
Modules called more than once (a shared activation) are left out, since a hook would see
only their last call. For each spatial resolution the point is the least nested module
finishing at it, the last of those when several are (a stage's outermost block, not a layer
inside the block that then downsamples); the points are those of the last ``n``
resolutions, shallow to deep.
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch import nn

log = logging.getLogger(__name__)


def is_weight_layer(module: nn.Module) -> bool:
    """A module with a weight matrix or kernel of its own (not a norm's scale vector)."""
    w = module._parameters.get("weight")
    return w is not None and w.dim() >= 2


def heads_by_trace(module: nn.Module) -> list[str]:
    """Every weight layer reached first on a path back from the output, nearest first."""
    gm = fx.symbolic_trace(module)
    mods = dict(gm.named_modules())
    out = next(n for n in gm.graph.nodes if n.op == "output")
    frontier, seen, heads = list(out.all_input_nodes), set(), []
    while frontier:
        node = frontier.pop(0)
        if node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and is_weight_layer(mods[str(node.target)]):
            heads.append(str(node.target))
            continue
        frontier.extend(node.all_input_nodes)
    return heads


def _head_by_trace(module: nn.Module) -> str | None:
    heads = heads_by_trace(module)
    return heads[0] if heads else None


def _head_by_execution(module: nn.Module, example: torch.Tensor) -> str | None:
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_a, n=n: order.append(n))
             for n, m in module.named_modules() if n and is_weight_layer(m)]
    try:
        _forward(module, example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def find_head(module: nn.Module, example: torch.Tensor) -> str | None:
    """Name of the layer whose output is the model's output (see module doc)."""
    try:
        return _head_by_trace(module)
    except Exception as e:  # tracing is best effort; execution order is the fallback
        log.info("torch.fx could not trace %s (%s); head found by execution order",
                 type(module).__name__, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return _head_by_execution(module, example)


def feature_points(module: nn.Module, example: torch.Tensor, n: int,
                   head: str | None) -> list[str]:
    """Up to ``n`` alignment points, shallow to deep (see module doc)."""
    if n <= 0:
        return []
    finished: list[tuple[str, tuple[int, int]]] = []
    calls: dict[str, int] = {}
    head_started = [False]

    def done(name: str):
        def fn(_m: nn.Module, _i: object, out: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if not head_started[0] and isinstance(out, torch.Tensor) and out.dim() == 4 \
                    and out.shape[2] * out.shape[3] > 1:
                finished.append((name, (int(out.shape[2]), int(out.shape[3]))))
        return fn

    def start(_m: nn.Module, _i: object) -> None:
        head_started[0] = True

    hooks = [m.register_forward_hook(done(name)) for name, m in module.named_modules() if name]
    mods = dict(module.named_modules())
    if head is not None and head in mods:
        hooks.append(mods[head].register_forward_pre_hook(start))
    try:
        _forward(module, example)
    finally:
        for h in hooks:
            h.remove()
    best: dict[tuple[int, int], str] = {}
    for name, hw in finished:
        if calls[name] != 1:
            continue
        known = best.pop(hw, None)  # re-insert: dict order = order of each resolution's end
        best[hw] = name if known is None or _depth(name) <= _depth(known) else known
    return list(best.values())[-n:]


def _depth(name: str) -> int:
    return name.count(".")


def _forward(module: nn.Module, example: torch.Tensor) -> None:
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(example[:1])
    finally:
        module.train(was_training)
