"""Operator fusion: BatchNorm folded into the preceding convolution before export; the
runtime fuses activations (and, for a graph-only model, everything) at session creation.

The folded model must give the same outputs within ``10 x fuse.tolerance`` of their scale
(the largest output magnitude on the example, absolute below 1): float32 rounding grows
with the values, and a detector's outputs are pixel coordinates."""

from __future__ import annotations

import logging

from hadmc_core.config import FuseConfig
from hadmc_core.context import Context, Work
from hadmc_core.errors import HadmcError
from hadmc_core.fuse import fold_batchnorm
from hadmc_core.techniques import register
from hadmc_core.techniques.base import Technique

log = logging.getLogger(__name__)


@register(FuseConfig)
class Fuse(Technique):
    order = 30
    stage = "fuse"

    def apply(self, ctx: Context, cfg: FuseConfig, work: Work) -> None:
        if work.module is None:
            return
        with ctx.stage("fuse"):
            try:
                res = fold_batchnorm(work.module, ctx.example)
            except Exception as e:  # torch.fx cannot trace every model
                reason = (f"torch.fx could not trace the model ({str(e).splitlines()[0]}); "
                          "BatchNorm is folded at export and " + _runtime(ctx))
                ctx.stages.skip("fuse", reason)
                ctx.state.setdefault("fusion", {"fused_conv_bn": 0, "max_abs_diff": 0.0,
                                                "relu": _runtime(ctx), "note": reason})
                return
        if not res.within(cfg.tolerance * 10):
            raise HadmcError(f"fusion changed outputs by {res.max_abs_diff:g} (outputs up to "
                             f"{res.output_scale:g}; allowed {cfg.tolerance * 10:g} of that, "
                             "at least absolute)")
        work.module = res.model
        ctx.state.setdefault("fusion", {"fused_conv_bn": res.fused_pairs,
                                        "max_abs_diff": res.max_abs_diff,
                                        "relu": _runtime(ctx)})
        ctx.stages.add_ran("fuse")

    def without_module(self, ctx: Context, cfg: FuseConfig) -> None:
        ctx.state.setdefault("fusion", {"fused_conv_bn": 0, "max_abs_diff": 0.0,
                                        "relu": _runtime(ctx),
                                        "note": "graph-only model: " + _runtime(ctx)})
        ctx.stages.add_ran("fuse")


def _runtime(ctx: Context) -> str:
    return f"fused by {ctx.backend.name} at session creation"
