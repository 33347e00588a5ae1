"""Update-aware recompression: compress a new base model within a deployed version's plan.

The controller is the usual one (``pipeline.Controller``) with three techniques swapped
for plan-keeping ones (``UpdateController.prepare``):

- **prune** keeps exactly the deployed version's channels (the same indices of the
  original model: ``plan.removed_indices``), folds BatchNorm, and starts from the deployed
  model's own weights (dequantized from its artifact), so the new model begins where the
  devices are;
- **distill** then fine-tunes that model toward the new base (the teacher) at
  ``UPDATE_LR_SCALE`` times the configured learning rate, on the logits (the folded model
  has no stage modules to align features on);
- **quantize** keeps the same layers in INT8 and first re-quantizes the weights with the
  deployed scales and zero points in the deployed graph (``plan.requantize_like``); only
  when that breaks the accuracy limit are the parameters re-tuned (a fresh calibration,
  the same INT8 layers).

INT4 weight-only is left out (a plan with INT4 layers is refused by ``plan.from_report``).
There is one candidate: the plan's structure. When it misses a constraint the result says
so; ``compress(..., allow_restructure=True)`` then compresses afresh.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from hadmc_core import distill as kd
from hadmc_core import graph_stats, pipeline, techniques
from hadmc_core import prune as pruning
from hadmc_core.config import DistillConfig, Int4Config, PruneConfig, QuantizeConfig
from hadmc_core.context import Context, Variant, Work
from hadmc_core.fuse import fold_batchnorm
from hadmc_core.plan import (
    Plan,
    PlanError,
    check_compatible,
    deployed_weights,
    removed_indices,
    requantize_like,
)
from hadmc_core.report import Candidate
from hadmc_core.techniques.base import Technique
from hadmc_core.train import TrainConfig, fit, use_bf16

log = logging.getLogger(__name__)
#: the update's fine-tuning learning rate, relative to ``distill.lr``
UPDATE_LR_SCALE = 0.1
STATE = "update"


def info(ctx: Context) -> dict[str, Any]:
    """The report's ``update`` section, filled in as the run goes."""
    return ctx.state.setdefault(STATE, {})


def plan_of(ctx: Context) -> Plan:
    p: Plan = ctx.state["update_plan"]
    return p


def prune_to(model: nn.Module, groups: list[pruning.Group], plan: Plan,
             example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with exactly the plan's channels kept in every group."""
    pruned = copy.deepcopy(model).cpu().eval()
    modules = dict(pruned.named_modules())
    dg = tp.DependencyGraph().build_dependency(pruned, example_inputs=example)
    for grp in groups:
        idxs = removed_indices(plan, grp)
        if not idxs:
            continue
        group = dg.get_pruning_group(modules[grp.root], grp.handler, idxs=idxs)
        if not dg.check_pruning_group(group):
            raise PlanError(f"the deployed plan's channels of {grp.root} cannot be removed "
                            "from this model")
        group.prune()
    return pruned


@torch.no_grad()
def load_deployed(module: nn.Module, plan: Plan) -> int:
    """Set every conv/linear layer of ``module`` (BatchNorm folded) to the deployed
    model's weights; returns how many layers were set."""
    mods = dict(module.named_modules())
    nodes = {n: ly.onnx_node for n, ly in plan.layers.items() if ly.onnx_node}
    for layer, (w, b) in deployed_weights(plan.artifact, nodes).items():
        mod = mods.get(layer)
        if mod is None or getattr(mod, "weight", None) is None:
            raise PlanError(f"layer {layer} of the deployed plan is not in this model")
        if tuple(mod.weight.shape) != w.shape:
            raise PlanError(f"layer {layer}: weight {tuple(mod.weight.shape)} here, "
                            f"{w.shape} in the deployed model")
        mod.weight.copy_(torch.from_numpy(w))
        if b is not None:
            if mod.bias is None:
                mod.bias = nn.Parameter(torch.from_numpy(b.copy()))
            else:
                mod.bias.copy_(torch.from_numpy(b))
    return len(nodes)


class PlanPrune(Technique):
    """The deployed version's channels, BatchNorm folded, its weights as the start."""

    order = 10
    stage = "prune"

    def prepare(self, ctx: Context, cfg: PruneConfig) -> bool:
        assert ctx.model is not None
        plan = plan_of(ctx)
        shapes = {n: ly.cout for n, ly in pruning.layer_table(ctx.model, ctx.example).items()}
        check_compatible(plan, ctx.spec.to_dict() if ctx.spec is not None else None, shapes)
        head = ctx.task.head(ctx.model, ctx.example)
        groups: list[pruning.Group] = []
        if plan.pruned:
            with ctx.stage("sensitivity"):
                groups, _ = pruning.analyze(ctx.model, ctx.data.train,
                                            dataclasses.replace(cfg, importance="l1"),
                                            ctx.example, loss=ctx.task.loss, head=head)
        ctx.state["update_groups"] = groups
        return True

    def apply(self, ctx: Context, cfg: PruneConfig, work: Work) -> None:
        assert work.module is not None
        plan = plan_of(ctx)
        with ctx.stage("prune"):
            module = prune_to(work.module, ctx.state["update_groups"], plan, ctx.example)
        with ctx.stage("fuse"):
            res = fold_batchnorm(module, ctx.example)
        ctx.state.setdefault("fusion", {"fused_conv_bn": res.fused_pairs,
                                        "max_abs_diff": res.max_abs_diff,
                                        "relu": f"fused by {ctx.backend.name} at session "
                                                "creation"})
        n = load_deployed(res.model, plan)
        work.module, work.pruned = res.model, True
        info(ctx).update({"structure": "reused", "start": "deployed weights",
                          "layers_from_deployed": n})
        ctx.stages.add_ran("prune")


class PlanDistill(Technique):
    """Fine-tune the deployed weights toward the new base at a low learning rate."""

    order = 20
    stage = "distill"

    def apply(self, ctx: Context, cfg: DistillConfig, work: Work) -> None:
        if work.module is None:
            return
        ucfg = dataclasses.replace(cfg, lr=cfg.lr * UPDATE_LR_SCALE, beta_feature=0.0)
        info(ctx)["finetune"] = {"lr": ucfg.lr, "epochs": ucfg.epochs,
                                 "kind": "finetune" if ucfg.plain_finetune else "distill"}
        if ucfg.plain_finetune:
            task = ctx.task
            with ctx.stage("finetune"):
                fit(work.module, kd.finetune_subset(ctx.data.train, ucfg),
                    TrainConfig(epochs=ucfg.epochs, batch_size=ucfg.batch_size, lr=ucfg.lr,
                                device=ucfg.device, bf16=use_bf16(ucfg.precision, ucfg.device)),
                    loss_fn=lambda m, x, y: task.loss(m(x), y),
                    progress=ctx.progress, stage="finetune")
            ctx.stages.add_ran("finetune")
            return
        with ctx.stage("distill"):
            assert ctx.model is not None
            cache = kd.cache_teacher(ctx.model, ctx.data.train, ucfg, ctx.progress,
                                     task=ctx.task)
            kd.distill(work.module, cache, ucfg, ctx.progress, stage="distill@update",
                       task=ctx.task)
        ctx.stages.add_ran("distill")


class PlanQuantize(Technique):
    """The plan's INT8 layers: deployed scales first, re-tuned only when needed."""

    phase = "graph"
    order = 10
    stage = "quantize"

    def variants(self, ctx: Context, cfg: QuantizeConfig, work: Work, current: Variant
                 ) -> Iterator[Variant]:
        plan = plan_of(ctx)
        nodes = list(graph_stats.layers(current.path))
        names = work.onnx_names
        keep = [names[n] for n, ly in plan.layers.items() if ly.precision != "int8"
                and n in names]
        precisions = {n: ("fp32" if n in keep else "int8") for n in nodes}
        path = ctx.work / f"{work.cid}-qplan.onnx"
        try:
            with ctx.stage("quantize"):
                counts = requantize_like(plan.artifact, current.path, path)
            info(ctx)["requantize"] = counts
            ctx.stages.add_ran("quantize")
            yield Variant("qplan", path, len(keep), precisions)
        except PlanError as e:
            info(ctx)["requantize"] = {"error": str(e)}
            log.info("deployed quantization parameters not reusable: %s", e)
        from hadmc_core.quantize import use_reduce_range

        path = ctx.work / f"{work.cid}-qretuned.onnx"
        with ctx.stage("quantize"):
            ctx.backend.quantize_int8(current.path, path, ctx.data.train.x[:cfg.calib_samples],
                                      keep_fp32=keep, per_channel=cfg.per_channel,
                                      reduce_range=use_reduce_range(cfg, ctx.profile))
        ctx.stages.add_ran("quantize")
        yield Variant("qretuned", path, len(keep), precisions)

    def measured(self, ctx: Context, cfg: QuantizeConfig, variant: Variant,
                 cand: Candidate) -> None:
        if cand.status != "accuracy":
            info(ctx)["quantization"] = ("deployed scales and zero points"
                                         if variant.suffix == "qplan" else
                                         "re-tuned (the deployed parameters broke the "
                                         "accuracy limit)")


class UpdateController(pipeline.Controller):
    """``pipeline.Controller`` with the plan-keeping techniques (module doc)."""

    SWAP: dict[type, type[Technique]] = {PruneConfig: PlanPrune, DistillConfig: PlanDistill,
                                         QuantizeConfig: PlanQuantize}
    unpruned_rung = False  # one candidate: the plan's structure

    def prepare(self) -> None:
        ctx = self.ctx
        plan = plan_of(ctx)
        if ctx.model is None:
            raise PlanError("an update within a deployed plan needs a PyTorch model; this "
                            "model is an ONNX graph only")
        self.restore_norm()
        for handler, cfg in techniques.ordered(ctx.cfg.techniques()):
            stage = handler.stage_name(cfg)
            swap = self.SWAP.get(type(cfg))
            if isinstance(cfg, Int4Config):
                ctx.stages.skip(stage, "an update keeps the deployed plan, which has no "
                                "INT4 layers")
                continue
            if isinstance(cfg, QuantizeConfig) and not plan.int8_layers:
                ctx.stages.skip(stage, "the deployed plan has no INT8 layers")
                continue
            if swap is not None:  # the plan decides, even over a switched-off technique
                h = swap()
                if isinstance(cfg, DistillConfig) and not cfg.enabled:
                    ctx.stages.skip(stage, "switched off in the config")
                    continue
                if h.prepare(ctx, cfg):
                    self.techs.append((h, cfg))
            elif not cfg.enabled:
                ctx.stages.skip(stage, "switched off in the config")
            elif handler.prepare(ctx, cfg):
                self.techs.append((handler, cfg))
