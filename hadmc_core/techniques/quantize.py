"""Layer-wise mixed-precision INT8 as a technique (the algorithm: ``hadmc_core.quantize``).

Each candidate's FP32 graph is quantized by the run's backend with the N layers most
deserving of floating point kept there, N walking ``keep_ladder``. Layers are ranked by
sensitivity divided by the time INT8 saves on them (latency model):

- with a PyTorch model: the measured error of the logits when only that layer is
  fake-quantized (``quantize.sensitivity``);
- graph only: the relative error of the layer's own INT8 weights (per channel when
  ``per_channel``), a cheap proxy read from the file.
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
        with ctx.stage("quantize"):
            rank = ranking(ctx, cfg, work, rr)
        nodes = list(graph_stats.layers(current.path))
        info = {"sensitivity": rank.sensitivity, "gain_ms": rank.int8_gain_ms}
        calib = ctx.data.train.x[:cfg.calib_samples]
        steps = sorted({min(k, len(rank.order)) for k in cfg.keep_ladder})
        for step, n_keep in enumerate(steps):
            ctx.progress(f"quantize {work.cid}", step, len(steps))
            keep = rank.order[:n_keep]
            path = ctx.work / f"{work.cid}-q{n_keep}.onnx"
            with ctx.stage("quantize"):
                ctx.backend.quantize_int8(current.path, path, calib, keep_fp32=keep,
                                          per_channel=cfg.per_channel, reduce_range=rr)
            precisions = {n: ("fp32" if n in keep else "int8") for n in nodes}
            ctx.stages.add_ran("quantize")
            yield Variant(f"q{n_keep}", path, n_keep, precisions, info)
        ctx.progress(f"quantize {work.cid}", len(steps), len(steps))
