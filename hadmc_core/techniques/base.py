"""What a technique handler is.

A handler serves one config type. The controller (``hadmc_core.pipeline``) calls, for each
enabled technique in order (``phase``, then ``order``):

- ``prepare(ctx, cfg)`` once before the candidates; False leaves the technique out of this
  run (it records why in ``ctx.stages``);
- module phase, per candidate: ``apply(ctx, cfg, work)`` transforms ``work.module`` (the
  candidate's PyTorch model) in the pipeline's order: prune, distill, fuse, ...;
- graph phase, per candidate, after the FP32 export: ``variants(ctx, cfg, work, current)``
  yields graphs built from the current one; the controller measures each and keeps the
  first within the accuracy limit (``optional`` handlers that find none leave the current
  graph as it was; others make the candidate fail the limit). ``measured`` sees each
  measured variant.

Without a PyTorch model (a graph-only ONNX source) module-phase handlers are not called;
``without_module`` records why in the report, or does what the runtime does instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from hadmc_core.config import TechniqueConfig
    from hadmc_core.context import Context, Variant, Work
    from hadmc_core.report import Candidate


class Technique:
    """Base of every handler; each method does nothing by default."""

    phase: ClassVar[str] = "module"      # "module" or "graph"
    order: ClassVar[int] = 50
    optional: ClassVar[bool] = False
    #: name in the report's stages (default: the config's key)
    stage: ClassVar[str] = ""

    def stage_name(self, cfg: TechniqueConfig) -> str:
        return self.stage or cfg.key or type(cfg).__name__

    def prepare(self, ctx: Context, cfg: Any) -> bool:
        return True

    def apply(self, ctx: Context, cfg: Any, work: Work) -> None:
        return None

    def variants(self, ctx: Context, cfg: Any, work: Work, current: Variant
                 ) -> Iterator[Variant]:
        return iter(())

    def measured(self, ctx: Context, cfg: Any, variant: Variant, cand: Candidate) -> None:
        return None

    def without_module(self, ctx: Context, cfg: Any) -> None:
        stage = self.stage_name(cfg)
        why = next((s for s in ctx.source_skipped if s.get("stage") == stage), None)
        first = (ctx.source_skipped or [{}])[0]
        if why is None:
            why = {"reason": "needs a PyTorch model; this model is an ONNX graph only"
                             + (f" ({first['reason']})" if first.get("reason") else ""),
                   "op": first.get("op"), "node": first.get("node")}
        ctx.stages.skip(stage, why["reason"], why.get("op"), why.get("node"))


class FunctionTechnique(Technique):
    """A module-phase handler written as ``fn(ctx, cfg, work)``."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def apply(self, ctx: Context, cfg: Any, work: Work) -> None:
        if work.module is not None:
            with ctx.stage(self.stage_name(cfg)):
                self.fn(ctx, cfg, work)
            ctx.stages.add_ran(self.stage_name(cfg))
