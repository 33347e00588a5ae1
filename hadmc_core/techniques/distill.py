"""Recovery of a pruned candidate: feature-aligned distillation from the original model,
or plain fine-tuning with the task's loss when both distillation weights are 0."""

from __future__ import annotations

from hadmc_core import distill as kd
from hadmc_core.config import DistillConfig
from hadmc_core.context import Context, Work
from hadmc_core.techniques import register
from hadmc_core.techniques.base import Technique
from hadmc_core.train import TrainConfig, fit, use_bf16


@register(DistillConfig)
class Distill(Technique):
    order = 20
    stage = "distill"

    def apply(self, ctx: Context, cfg: DistillConfig, work: Work) -> None:
        if not work.pruned or work.module is None:
            return  # an unpruned candidate is the model itself
        if cfg.plain_finetune:
            task = ctx.task
            with ctx.stage("finetune"):
                fit(work.module, kd.finetune_subset(ctx.data.train, cfg),
                    TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                device=cfg.device, bf16=use_bf16(cfg.precision, cfg.device)),
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
                       task=ctx.task)
        ctx.stages.add_ran("distill")
