"""Recovery of a pruned candidate: feature-aligned distillation from the original model,
or plain fine-tuning with the task's loss when both distillation weights are 0.

The more pruning removed, the longer the recovery: ``distill.epochs x (1 + removed_scale x
the fraction of the model's MACs removed)``, at most ``distill.max_epochs``. Each pruned
candidate's removed fraction and epochs go to ``ctx.state["recovery"]`` (the report's
``recovery``).
"""

from __future__ import annotations

from hadmc_core import distill as kd
from hadmc_core import prune
from hadmc_core.config import DistillConfig
from hadmc_core.context import Context, Work
from hadmc_core.techniques import register
from hadmc_core.techniques.base import Technique
from hadmc_core.train import TrainConfig, fit, use_bf16


def recovery_epochs(cfg: DistillConfig, removed: float) -> float:
    """Epochs of recovery for a candidate that lost ``removed`` (0..1) of the MACs."""
    return min(cfg.max_epochs, cfg.epochs * (1 + cfg.removed_scale * max(0.0, removed)))


def removed_fraction(ctx: Context, work: Work) -> float:
    """Fraction of the original model's MACs that pruning removed from the candidate."""
    assert ctx.model is not None and work.module is not None
    if "macs" not in ctx.state:
        ctx.state["macs"] = prune.count_macs(ctx.model, ctx.example)
    full = ctx.state["macs"]
    return 1 - prune.count_macs(work.module, ctx.example) / full if full else 0.0


@register(DistillConfig)
class Distill(Technique):
    order = 20
    stage = "distill"

    def apply(self, ctx: Context, cfg: DistillConfig, work: Work) -> None:
        if not work.pruned or work.module is None:
            return  # an unpruned candidate is the model itself
        removed = removed_fraction(ctx, work)
        epochs = recovery_epochs(cfg, removed)
        ctx.state.setdefault("recovery", []).append(
            {"candidate": work.cid, "removed_macs_fraction": round(removed, 4),
             "epochs": round(epochs, 3), "method": "finetune" if cfg.plain_finetune
             else "distill"})
        if cfg.plain_finetune:
            task = ctx.task
            with ctx.stage("finetune"):
                fit(work.module, kd.finetune_subset(ctx.data.train, cfg),
                    TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                device=cfg.device, bf16=use_bf16(cfg.precision, cfg.device),
                                schedule=cfg.schedule),
                    loss_fn=lambda m, x, y: task.loss(m(x), y),
                    progress=ctx.progress, stage="finetune")
            ctx.stages.add_ran("finetune")
            return
        with ctx.stage("distill"):
            cache = ctx.state.get("teacher")
            if cache is None:
                assert ctx.model is not None
                cache = kd.cache_teacher(ctx.model, ctx.data.train, cfg, ctx.progress,
                                         task=ctx.task)
                ctx.state["teacher"] = cache
                ctx.state["distill_alignment"] = list(cache.features)
                ctx.state["distill_alignment_source"] = cache.alignment_source
            kd.distill(work.module, cache, cfg, ctx.progress, stage=f"distill@{work.fraction:g}",
                       task=ctx.task, epochs=epochs)
        ctx.stages.add_ran("distill")
