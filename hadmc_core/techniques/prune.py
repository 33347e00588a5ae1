"""Structured pruning as a technique: channel importance once, then per candidate a
latency-aware plan from the configured search strategy (``hadmc_core.search``, chosen by
``prune.search``) applied on Torch-Pruning's graph.

A strategy other than greedy searches precisions too when the run quantizes and the
importance is Taylor's (the proxy's two terms are then both estimates of the loss added):
each layer's INT8 sensitivity is measured once on the unpruned model as the task's
output-distillation loss with only that layer fake-quantized, and the plan's FP32 layers
are the quantize technique's first variant (``ctx.state["search_precisions"]``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hadmc_core import calibrate, quantize, search
from hadmc_core import prune as pruning
from hadmc_core.config import PruneConfig
from hadmc_core.context import Context, Work
from hadmc_core.techniques import register
from hadmc_core.techniques.base import Technique

log = logging.getLogger(__name__)


#: where the measured ladder times the search's plans: fractions of the estimated removable
#: latency (0: every group at its floor), denser near the floor where the rungs sit
LADDER_PROBES = (0.0, 0.15, 0.3, 0.5, 0.75)


def measured_ladder(ctx: Context, cfg: PruneConfig) -> bool:
    """Whether the ladder is placed by measurement (``prune.ladder_by``): only where the
    latency is measured on this machine, and there is a pruned rung to place."""
    return (cfg.ladder_by == "measured" and cfg.uniform_ratio is None and ctx.lat.measure
            and not ctx.lat.device_table and ctx.cfg.measure.in_graph
            and any(r < 1.0 for r in cfg.ladder))


@dataclass
class PruneState:
    groups: list[pruning.Group]
    layers: dict[str, pruning.Layer]
    head: str | list[str]
    problem: search.Problem | None = None   # for a strategy other than greedy


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
        st = ctx.state["prune"] = PruneState(groups, layers, head,
                                             self.problem(ctx, cfg, groups, layers))
        if measured_ladder(ctx, cfg):
            self.measure_ladder(ctx, cfg, st)
        return True

    def problem(self, ctx: Context, cfg: PruneConfig, groups: list[pruning.Group],
                layers: dict[str, pruning.Layer]) -> search.Problem | None:
        if cfg.search == "greedy" or cfg.uniform_ratio is not None:
            return None
        sens = None
        if ctx.search_precision == "int8" and cfg.importance == "taylor":
            assert ctx.model is not None
            rr = quantize.use_reduce_range(ctx.cfg.quantize, ctx.profile)
            with ctx.stage("sensitivity"):
                sens = quantize.sensitivity(
                    ctx.model, ctx.data.train, ctx.cfg.quantize, rr, ctx.progress,
                    score=lambda out, ref: float(ctx.task.distill_loss(out, ref, 1.0)))
        return search.Problem(groups, layers, ctx.lat, ctx.search_precision,
                              round_to=ctx.channel_multiple, min_keep=cfg.min_keep,
                              size_weight=cfg.size_weight,
                              taylor_scale=1.0 / max(1, cfg.calib_batches),
                              int8_sensitivity=sens)

    def allocate(self, ctx: Context, cfg: PruneConfig, st: PruneState, fraction: float,
                 cid: str) -> search.Allocation:
        """The configured strategy's plan for an estimated latency ``fraction`` of the
        unpruned model."""
        if st.problem is None:
            return search.allocate(st.groups, st.layers, ctx.lat, fraction,
                                   ctx.search_precision, round_to=ctx.channel_multiple,
                                   min_keep=cfg.min_keep, uniform_ratio=cfg.uniform_ratio,
                                   size_weight=cfg.size_weight)
        alloc = search.run(cfg.search, st.problem, fraction * st.problem.full_ms,
                           search.Budget(cfg.search_trials, seed=ctx.cfg.seed))
        log.info("search %s for %s: %.3f ms estimated, proxy %.4g, %d candidates, %.1f s",
                 cfg.search, cid, alloc.estimated_ms, alloc.proxy, alloc.evaluated,
                 alloc.seconds)
        return alloc

    def measure_ladder(self, ctx: Context, cfg: PruneConfig, st: PruneState) -> None:
        """``ctx.ladder_curve``: the structures the search plans at ``LADDER_PROBES`` of the
        estimated removable latency (and the unpruned one), timed whole as candidates are
        built, so the ladder is placed by what the runtime measures rather than by the
        estimate (whose error is largest near the floor, where per-node costs dominate)."""
        floor = ctx.floor_fraction
        if 1 - floor < 0.02:
            log.info("ladder placed by the estimate: pruning is estimated to remove %.1f %% "
                     "of the latency, nothing to measure", 100 * (1 - floor))
            return
        fractions = sorted({round(floor + p * (1 - floor), 4) for p in LADDER_PROBES})
        with ctx.stage("search"):
            plans: list[dict[str, int] | None] = [
                self.allocate(ctx, cfg, st, f, f"ladder-{f}").keep for f in fractions]
        assert ctx.model is not None
        with ctx.stage("ladder"):
            ms = calibrate.time_plans(
                ctx.model, st.groups, [*plans, None], ctx.example, ctx.data.train,
                ctx.search_precision, quantize.use_reduce_range(ctx.cfg.quantize, ctx.profile),
                ctx.lat.threads, ctx.work, ctx.backend, ctx.progress)
        ctx.ladder_curve = list(zip([*fractions, 1.0], ms, strict=True))
        log.info("ladder placed by measurement: %s",
                 ", ".join(f"{f:.3f} -> {m:.3f} ms" for f, m in ctx.ladder_curve))

    def apply(self, ctx: Context, cfg: PruneConfig, work: Work) -> None:
        st: PruneState | None = ctx.state.get("prune")
        if st is None or work.module is None or (work.fraction >= 1.0
                                                 and cfg.uniform_ratio is None):
            return
        with ctx.stage("search"):
            alloc = self.allocate(ctx, cfg, st, work.fraction, work.cid)
            if alloc.precisions is not None:
                ctx.state.setdefault("search_precisions", {})[work.cid] = alloc.precisions
        with ctx.stage("prune"):
            work.module = pruning.apply(work.module, st.groups, alloc.keep, ctx.example)
        work.pruned, work.estimated_ms = True, alloc.estimated_ms
        ctx.stages.add_ran("prune")
