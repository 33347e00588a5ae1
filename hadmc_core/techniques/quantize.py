"""Layer-wise mixed-precision INT8 as a technique (the algorithm: ``hadmc_core.quantize``).

Each candidate's FP32 graph is quantized by the run's backend with the N layers most
deserving of floating point kept there, N walking ``keep_ladder``. Layers are ranked by
sensitivity divided by the time INT8 saves on them (latency model):

- with a PyTorch model: the measured error of the logits when only that layer is
  fake-quantized (``quantize.sensitivity``);
- graph only: the relative error of the layer's own INT8 weights (per channel when
  ``per_channel``), a cheap proxy read from the file.

When the search chose precisions (``prune.search`` evolution or rl), its plan is the first
variant, and the ranking then adds layers to it only if that plan breaks the accuracy limit.
"""

from __future__ import annotations

from collections.abc import Iterator

from hadmc_core import graph_stats, quantize
from hadmc_core.config import QuantizeConfig
from hadmc_core.context import Context, Variant, Work
from hadmc_core.techniques import register
from hadmc_core.techniques.base import Technique


def gain_ms(ctx: Context, layers: dict[str, graph_stats.GraphLayer]) -> dict[str, float]:
    """Time INT8 saves on each layer, by the latency model."""
    return {n: (ctx.lat.layer_ms(ly.geom, ly.cin, ly.cout, "fp32")
                - ctx.lat.layer_ms(ly.geom, ly.cin, ly.cout, "int8")) * ly.tokens
            for n, ly in layers.items()}


def ranking(ctx: Context, cfg: QuantizeConfig, work: Work,
            reduce_range: bool) -> quantize.Ranking:
    """Weight nodes of the candidate's FP32 graph, most deserving of floating point first."""
    assert work.fp32_path is not None
    layers = graph_stats.layers(work.fp32_path)
    gain = gain_ms(ctx, layers)
    if work.module is not None and work.onnx_names:
        sens = quantize.sensitivity(work.module, ctx.data.train, cfg, reduce_range,
                                    ctx.progress)
        by_node = {work.onnx_names[t]: s for t, s in sens.items() if t in work.onnx_names}
    else:
        by_node = graph_stats.int8_weight_error(work.fp32_path, cfg.per_channel)
    return quantize.rank_layers({n: s for n, s in by_node.items() if n in layers}, gain)


@register(QuantizeConfig)
class Quantize(Technique):
    phase = "graph"
    order = 10
    stage = "quantize"

    def prepare(self, ctx: Context, cfg: QuantizeConfig) -> bool:
        if not ctx.profile.supports("int8"):
            ctx.stages.skip("quantize", f"the profile {ctx.profile.name} has no int8")
            return False
        return True

    def variants(self, ctx: Context, cfg: QuantizeConfig, work: Work, current: Variant
                 ) -> Iterator[Variant]:
        rr = quantize.use_reduce_range(cfg, ctx.profile)
        nodes = list(graph_stats.layers(current.path))
        calib = ctx.data.train.x[:cfg.calib_samples]
        planned = planned_fp32(ctx, work)
        total = len(set(cfg.keep_ladder)) + (planned is not None)
        for step, (keep, info) in enumerate(self._keep_sets(ctx, cfg, work, rr, planned)):
            ctx.progress(f"quantize {work.cid}", step, total)
            path = ctx.work / f"{work.cid}-q{len(keep)}.onnx"
            with ctx.stage("quantize"):
                ctx.backend.quantize_int8(current.path, path, calib, keep_fp32=keep,
                                          per_channel=cfg.per_channel, reduce_range=rr)
            precisions = {n: ("fp32" if n in keep else "int8") for n in nodes}
            ctx.stages.add_ran("quantize")
            yield Variant(f"q{len(keep)}", path, len(keep), precisions, info)
        ctx.progress(f"quantize {work.cid}", total, total)

    def _keep_sets(self, ctx: Context, cfg: QuantizeConfig, work: Work, rr: bool,
                   planned: list[str] | None) -> Iterator[tuple[list[str], dict]]:
        """Layers kept in floating point, step by step: the search's plan first when it
        chose precisions (the ranking is then computed only if that plan fails), then the
        ranking's most deserving layers added to reach each ``keep_ladder`` count."""
        if planned is not None:
            assert work.fp32_path is not None
            yield planned, {"gain_ms": gain_ms(ctx, graph_stats.layers(work.fp32_path))}
        with ctx.stage("quantize"):
            rank = ranking(ctx, cfg, work, rr)
        info = {"sensitivity": rank.sensitivity, "gain_ms": rank.int8_gain_ms}
        base = planned or []
        rest = [n for n in rank.order if n not in base]
        counts = sorted({min(k, len(base) + len(rest)) for k in cfg.keep_ladder})
        for n_keep in counts:
            if planned is None or n_keep > len(base):
                yield base + rest[:n_keep - len(base)], info


def planned_fp32(ctx: Context, work: Work) -> list[str] | None:
    """Graph nodes the search planned in FP32 for this candidate (None: it chose no
    precisions, or the model is a graph only)."""
    plan = ctx.state.get("search_precisions", {}).get(work.cid)
    if plan is None or not work.onnx_names:
        return None
    return [work.onnx_names[n] for n, p in plan.items() if p == "fp32" and n in work.onnx_names]
