"""Structured pruning as a technique: channel importance once, then per candidate a
latency-aware allocation (``hadmc_core.search``) applied on Torch-Pruning's graph."""

from __future__ import annotations

from dataclasses import dataclass

from hadmc_core import calibrate, quantize, search
from hadmc_core import prune as pruning
from hadmc_core.config import PruneConfig
from hadmc_core.context import Context, Work
from hadmc_core.techniques import register
from hadmc_core.techniques.base import Technique


@dataclass
class PruneState:
    groups: list[pruning.Group]
    layers: dict[str, pruning.Layer]
    head: str | list[str]


@register(PruneConfig)
class Prune(Technique):
    order = 10
    stage = "prune"

    def prepare(self, ctx: Context, cfg: PruneConfig) -> bool:
        assert ctx.model is not None
        head = ctx.task.head(ctx.model, ctx.example)
        if head is None:
            ctx.stages.skip("prune", "no output layer (a module with a weight) was found on "
                            "the path to the model's output")
            return False
        with ctx.stage("sensitivity"):
            groups, layers = pruning.analyze(ctx.model, ctx.data.train, cfg, ctx.example,
                                             ctx.progress, loss=ctx.task.loss, head=head)
        if not groups:
            ctx.stages.skip("prune", "no prunable channel group (every layer feeds the head "
                            "or is coupled to it)")
            return False
        q = ctx.search_precision
        if ctx.lat.measure and not ctx.lat.device_table and ctx.cfg.measure.in_graph:
            with ctx.stage("latency"):
                calibrate.fit_latency(
                    ctx.lat, ctx.model, groups, ctx.example, ctx.data.train, sorted({"fp32", q}),
                    quantize.use_reduce_range(ctx.cfg.quantize, ctx.profile), ctx.work,
                    ctx.channel_multiple, ctx.progress, backend=ctx.backend)
        with ctx.stage("sensitivity"):
            full = {g.root: g.channels for g in groups}
            shapes = search.Shapes(groups, layers)
            ctx.precision_ratio = (search.estimate_ms(ctx.lat, shapes, full, q)
                                   / search.estimate_ms(ctx.lat, shapes, full, "fp32"))
            ctx.floor_fraction = search.floor_fraction(groups, layers, ctx.lat, q,
                                                       ctx.channel_multiple, cfg.min_keep)
        ctx.state["prune"] = PruneState(groups, layers, head)
        return True

    def apply(self, ctx: Context, cfg: PruneConfig, work: Work) -> None:
        st: PruneState | None = ctx.state.get("prune")
        if st is None or work.module is None or (work.fraction >= 1.0
                                                 and cfg.uniform_ratio is None):
            return
        with ctx.stage("search"):
            alloc = search.allocate(st.groups, st.layers, ctx.lat, work.fraction,
                                    ctx.search_precision, round_to=ctx.channel_multiple,
                                    min_keep=cfg.min_keep, uniform_ratio=cfg.uniform_ratio,
                                    size_weight=cfg.size_weight)
        with ctx.stage("prune"):
            work.module = pruning.apply(work.module, st.groups, alloc.keep, ctx.example)
        work.pruned, work.estimated_ms = True, alloc.estimated_ms
        ctx.stages.add_ran("prune")
