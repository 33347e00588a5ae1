"""The HAD-MC controller: baseline -> techniques -> candidates -> choice -> report.

One ``Controller`` runs every technique registered for the configs of the run
(``hadmc_core.techniques``), in their order: prune -> distill -> fuse on the PyTorch model
(module phase), then mixed-precision INT8 and INT4 weight-only on the exported graph (graph
phase), each candidate measured by the backend of the target profile.

It walks a ladder of latency targets in the order of ``prune.order`` (``Walk``): by
default the middle rung first, then halving towards the deepest rung that holds. The rungs
are fractions of
the latency pruning can remove; where latency is measured on this machine, they are
placed on measured time (``prune.ladder_by``): the structures the search plans at a few
estimated fractions are built untrained, quantized and timed whole (latency depends on
structure alone), because the estimate errs most near the floor. For each rung it builds a
candidate (the module phase allocates channels against the latency model, prunes,
distills, fuses), exports it, and lets each graph-phase technique offer variants (for
quantization: more and more layers kept in floating point) until one is within the
accuracy limit; if the FP32 export is already over the limit, it backs off to less
pruning. A candidate within every constraint rules out the milder rungs, one that misses
rules out the deeper ones. When the deepest rung held, every rung tried held, and its drop
bound leaves at least half the limit unused (``prune.descend_below``), a rung halfway to
the latency floor is tried next. All of it within ``max_candidates`` and the time budget
(``next_rung``).

The unpruned rung (``1.0`` in ``prune.ladder``, there by default) is measured after the
pruned ones whatever they gave, outside ``max_candidates`` (it needs no recovery
training): the unpruned model quantized as the other candidates are, i.e. what plain
post-training INT8 gives. The fastest candidate within every constraint is chosen, so a
run never returns a model slower than that one when it meets the constraints, nor a
pruned model over the accuracy limit when it does. When every INT8 variant of the
unpruned model is over the limit too, its FP32 export is a candidate (nothing
compressed, said in a warning). Only when no candidate meets every constraint is the
best one found returned with a clear message (``CompressionResult.met`` is False).
A model that exists only as an ONNX graph runs the same loop with one rung and the graph
phase alone; the report lists the stages skipped and why.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hadmc_core import decision, graph_stats, prune, quantize, renorm, techniques
from hadmc_core.config import PipelineConfig
from hadmc_core.context import Context, Variant, Work
from hadmc_core.data import DataSplits
from hadmc_core.decision import DropBound
from hadmc_core.errors import BudgetError
from hadmc_core.hal.feedback import Correction
from hadmc_core.hal.latency import LatencyModel, runs_here
from hadmc_core.hal.profile import HardwareProfile
from hadmc_core.measure import Measurer, latency_source
from hadmc_core.progress import ProgressFn, no_progress
from hadmc_core.report import Candidate, LayerDecision, ModelStats, Report
from hadmc_core.tasks import Task
from hadmc_core.train import use_bf16

log = logging.getLogger(__name__)


def make_context(model: nn.Module | None, data: DataSplits, profile: HardwareProfile,
                 cfg: PipelineConfig, work: Path, progress: ProgressFn, *, task: Task,
                 backend: Any, example: torch.Tensor, graph: Path | None = None,
                 spec: Any = None, origin: dict[str, Any] | None = None,
                 source_skipped: list[dict[str, Any]] | None = None,
                 measure_layers: bool | None = None,
                 device_table: dict[str, list[float]] | None = None,
                 profile_backend: bool = True,
                 latency_correction: Correction | None = None,
                 device_tables: dict[str, dict[str, list[float]]] | None = None) -> Context:
    """``profile_backend`` is False when ``backend`` stands in for runtimes of the profile
    that are not on this machine. ``latency_correction`` scales ``device_table``'s
    estimates (``hadmc_core.hal.feedback``); ``device_tables``: each targeted device's own
    table by name, whose uncorrected estimates the report keeps per candidate."""
    measure = runs_here(profile) if measure_layers is None else measure_layers
    # Single layers are timed with the run's backend (an OpenVINO run fits OpenVINO's
    # layer times), cached per runtime.
    lat = LatencyModel(profile, measure=measure, table=device_table,
                       threads=cfg.measure.threads, backend=backend,
                       correction=latency_correction)
    own = {name: lat.with_table(t) for name, t in (device_tables or {}).items() if t} \
        if device_table else {}
    measurer = Measurer(backend, task, lat, cfg.measure, tuple(data.train.x.shape[1:]),
                        latency_source(profile, device_table, profile_backend),
                        confidence=cfg.constraints.confidence, device_lats=own)
    return Context(model.cpu().eval() if model is not None else None, graph, spec, data,
                   profile, cfg, work, progress, example, lat, task, measurer,
                   origin=dict(origin or {}), source_skipped=list(source_skipped or []))


def counts(ctx: Context, model: nn.Module) -> tuple[int, int]:
    return prune.count_params(model), prune.count_macs(model, ctx.example)


def _curve(ctx: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The measured ladder curve as (estimated fractions, ms) with the ms made
    non-decreasing and each ms kept once (at its smallest fraction); None when the
    ladder is placed by the estimate, or when pruning measured no faster."""
    pts = getattr(ctx, "ladder_curve", None)
    if not pts or len(pts) < 2:
        return None
    f = np.array([p[0] for p in pts], dtype=float)
    ms = np.maximum.accumulate(np.array([p[1] for p in pts], dtype=float))
    ms, first = np.unique(ms, return_index=True)
    f = f[first]
    return (f, ms) if len(ms) > 1 else None


def fraction_at(ctx: Any, r: float) -> float:
    """The estimated latency fraction (what the search is asked for) whose structure
    removes ``1 - r`` of the latency pruning can remove: measured on the ladder curve when
    there is one, otherwise by the estimate (floor + r x (1 - floor))."""
    if r >= 1.0:
        return 1.0
    floor, c = ctx.floor_fraction, _curve(ctx)
    if c is None:
        return floor + r * (1 - floor)
    f, ms = c
    return float(np.interp(ms[0] + r * (ms[-1] - ms[0]), ms, f))


def position(ctx: Any, fraction: float) -> float:
    """Inverse of ``fraction_at``: the share of removable latency an estimated fraction
    keeps (0 at the floor, 1 unpruned)."""
    floor, c = ctx.floor_fraction, _curve(ctx)
    if c is None:
        return (fraction - floor) / (1 - floor) if floor < 1 else 1.0
    f, ms = c
    return float((np.interp(fraction, f, ms) - ms[0]) / (ms[-1] - ms[0]))


def ladder(ctx: Any) -> list[float]:
    pc, cons = ctx.cfg.prune, ctx.cfg.constraints
    if not pc.enabled or pc.uniform_ratio is not None or not getattr(ctx, "prunable", True):
        return [1.0]
    # Rungs are fractions of the latency pruning can remove (above the floor), so a rung
    # never asks for less than the floor and crushes every layer to it.
    steps = sorted({round(fraction_at(ctx, r), 4) for r in pc.ladder})
    if cons.latency_budget_ms and ctx.baseline:
        c = _curve(ctx)
        if c is not None:
            # Measured at the search precision: the budget reads off the curve directly.
            f = float(np.interp(cons.latency_budget_ms, c[1], c[0]))
        else:
            # The estimate's fractions are of the unpruned model at the search precision;
            # the budget is wall-clock of the whole model, so scale by its FP32-to-INT8
            # ratio.
            f = min(1.0, cons.latency_budget_ms / ctx.baseline.latency_ms / ctx.precision_ratio)
        steps = sorted({round(f, 3), *[s for s in steps if s > f]})
    return steps


def descend(ctx: Any, fraction: float, cand: Candidate) -> float | None:
    """The rung halfway from ``fraction`` to the floor in removable latency (measured when
    the ladder was), when ``cand`` (its candidate, which meets every constraint) has a drop
    bound of at most ``prune.descend_below`` of the accuracy limit; None when it has not,
    or when the floor is within 0.02."""
    limit = ctx.cfg.constraints.max_accuracy_drop
    floor = ctx.floor_fraction
    if fraction >= 1.0 or fraction - floor < 0.02 or \
            drop_of(ctx, cand)[1] > ctx.cfg.prune.descend_below * limit:
        return None
    deeper = round(fraction_at(ctx, position(ctx, fraction) / 2), 4)
    return deeper if deeper < fraction - 0.005 else None


class Walk:
    """The order the pruned rungs are tried in (``prune.order``), over the rungs not yet
    ruled out (``pending``, deepest first).

    ``aggressive``: the deepest rung first, then milder ones until one meets every
    constraint. ``bisect``: the middle rung first (the milder of two middles); one that
    meets the constraints rules out every milder rung, one that misses every deeper rung,
    so the deepest rung that holds is found in about log2(n + 1) candidates instead of up
    to n, and a budget that affords one candidate spends it on a rung likelier to pass.
    Either way, when the deepest rung so far met the constraints and every rung tried did
    too, ``descend`` may add a deeper one."""

    def __init__(self, rungs: list[float], order: str) -> None:
        self.pending = sorted(rungs)
        self.order = order
        self.all_met = True        # every rung tried met every constraint
        self.descending = False
        self._forced: float | None = None

    def pick(self) -> float:
        if self._forced is not None:
            return self._forced
        return self.pending[0] if self.order == "aggressive" else \
            self.pending[len(self.pending) // 2]

    def met(self, rung: float) -> None:
        self._forced = None
        self.pending = [r for r in self.pending if r < rung]

    def missed(self, rung: float) -> None:
        self._forced, self.all_met = None, False
        self.pending = [r for r in self.pending if r > rung]

    def room_below(self) -> bool:
        """Whether descent may add a rung: nothing deeper left to try, none missed."""
        return not self.pending and self.all_met

    def descend(self, rung: float) -> None:
        self.pending, self.descending = [rung], True

    def force(self, rung: float) -> None:
        """Try ``rung`` next (a deeper one after a candidate slower than the latency
        budget), then go on as before."""
        self.pending = sorted({rung, *self.pending})
        self._forced = rung


def next_rung(rungs: list[float], pick: float, elapsed: float, cost: float, reserve: float,
              budget: float | None, last_failed: bool) -> tuple[float | None, str | None]:
    """The pruned rung to try next within the time budget, and why the ladder changed
    course (None when it did not): ``pick`` is the walk's choice among ``rungs``, ``cost``
    what the last pruned candidate took (0 before the first), ``reserve`` what the unpruned
    rung and the final measurements will take. When the next candidate would not fit, none
    is tried; when only one more fits after a candidate over a limit, it is the mildest
    rung left, the one likeliest to pass."""
    if not rungs:
        return None, None
    if not budget or cost <= 0:
        return pick, None
    left = budget - elapsed - reserve
    if cost > left:
        return None, (f"time budget: {elapsed:.0f} s spent, the next candidate (about "
                      f"{cost:.0f} s) and the unpruned rung with the final measurements "
                      f"(about {reserve:.0f} s) would pass {budget:g} s")
    if last_failed and len(rungs) > 1 and 2 * cost > left and pick != rungs[-1]:
        return rungs[-1], (f"time budget: {left:.0f} s left for pruned rungs, one more "
                           f"candidate fits: the mildest rung left, {rungs[-1]}")
    return pick, None


def accuracy_ok(ctx: Context, bound: DropBound) -> bool:
    """Whether a drop is within the accuracy limit at the configured confidence: its paired
    upper bound on the validation split, not its point estimate (``hadmc_core.decision``)."""
    return decision.within(bound, ctx.cfg.constraints.max_accuracy_drop)


def drop_of(ctx: Context, c: Candidate) -> tuple[float, float]:
    """A candidate's validation drop and its paired upper bound (the point twice when it
    has no bound)."""
    assert ctx.baseline is not None
    point = ctx.baseline.val_accuracy - c.val_accuracy if c.val_drop is None else c.val_drop
    return point, point if c.val_drop_upper is None else c.val_drop_upper


def over_accuracy_limit(ctx: Context, c: Candidate) -> bool:
    return drop_of(ctx, c)[1] > ctx.cfg.constraints.max_accuracy_drop


def violations(ctx: Context, c: Candidate) -> list[str]:
    """The constraints ``c`` breaks, in words; empty when it meets every one."""
    cons = ctx.cfg.constraints
    why = []
    point, upper = drop_of(ctx, c)
    if over_accuracy_limit(ctx, c):
        why.append(f"validation drop {point:.2f} points, upper bound {upper:.2f} at "
                   f"{cons.confidence:.0%} confidence > {cons.max_accuracy_drop}")
    if cons.latency_budget_ms and c.latency_ms > cons.latency_budget_ms:
        why.append(f"latency {c.latency_ms:.3f} ms > budget {cons.latency_budget_ms} ms")
    if cons.size_budget_mb and c.size_bytes > cons.size_budget_mb * 1e6:
        why.append(f"size {c.size_bytes / 1e6:.2f} MB > budget {cons.size_budget_mb} MB")
    return why


def choose(ctx: Context) -> tuple[Candidate, list[str]]:
    ok = [c for c in ctx.candidates if not violations(ctx, c)]
    if ok:
        return min(ok, key=lambda c: c.latency_ms), []
    acc_ok = [c for c in ctx.candidates if c.status != "accuracy"]
    best = (min(acc_ok, key=lambda c: c.latency_ms) if acc_ok
            else max(ctx.candidates, key=lambda c: c.val_accuracy))
    return best, violations(ctx, best)


class Controller:
    """Runs one compression (see module doc)."""

    #: Whether the unpruned rung of the ladder is measured after the pruned ones whatever
    #: they gave (the module doc); an update within a deployed plan has one candidate.
    unpruned_rung = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.techs: list[tuple[techniques.Technique, Any]] = []
        self._built: dict[str, tuple[Path, dict[str, str], tuple[int, int]]] = {}
        self._original: dict[str, prune.Layer] | None = None
        self.ladder: dict[str, Any] = {}
        self._graph_s: list[float] = []   # seconds each candidate's graph phase took

    def run(self) -> Report:
        ctx = self.ctx
        self.baseline()
        self.prepare()
        rungs, tried = ladder(ctx), 0
        self.ladder = {"floor_fraction": round(ctx.floor_fraction, 4), "rungs": list(rungs),
                       "tried": [], "descended": [],
                       "placement": "measured" if _curve(ctx) is not None else "estimate",
                       "measured_ms": [[round(f, 4), round(m, 6)]
                                       for f, m in ctx.ladder_curve]}
        last = self.unpruned_rung and len(rungs) > 1 and rungs[-1] >= 1.0
        if last:
            rungs.pop()
        budget = ctx.cfg.constraints.latency_budget_ms
        walk = Walk(rungs, ctx.cfg.prune.order)
        cost, failed = 0.0, False
        while walk.pending and tried < ctx.cfg.max_candidates:
            fraction, course = next_rung(walk.pending, walk.pick(),
                                         time.monotonic() - ctx.started, cost,
                                         self.reserve_s(), ctx.cfg.constraints.time_budget_s,
                                         failed)
            if course:
                log.info("%s", course)
                self.ladder.setdefault("time_budget", []).append(course)
            if fraction is None:
                ctx.warnings.append(f"the ladder stopped early: {course}")
                break
            t = time.monotonic()
            cand = self.candidate(fraction)
            cost = time.monotonic() - t
            failed = bool(violations(ctx, cand))
            tried += 1
            self.ladder["tried"].append(fraction)
            if walk.descending:
                self.ladder["descended"].append(fraction)
            if not failed:
                walk.met(fraction)
                deeper = descend(ctx, fraction, cand) if walk.room_below() else None
                if deeper is not None:
                    log.info("candidate %s meets every constraint with room to spare: "
                             "trying the rung at %.4f", cand.id, deeper)
                    walk.descend(deeper)
                continue
            walk.missed(fraction)
            if cand.status != "accuracy" and budget and cand.latency_ms > budget \
                    and fraction > 0.02:
                # Accurate but slower than the budget: the estimate was optimistic, so aim
                # lower in proportion before backing off.
                walk.force(round(fraction * budget / cand.latency_ms * 0.95, 4))
        if last:
            self.unpruned()
            self.ladder["tried"].append(1.0)
        best, why = choose(ctx)
        best.chosen = True
        if best.latency_fraction >= 1.0 and best.id.endswith("-fp32") and len(ctx.candidates) > 1:
            ctx.warnings.append(f"the chosen model {best.id} is the unpruned FP32 export: no "
                                "compressed candidate met every constraint")
        with ctx.stage("measure"):
            final = self.stats(best.id, best.path, test=True)  # type: ignore[arg-type]
        for handler, cfg in self.techs:  # prepared but never applied
            ctx.stages.skip(handler.stage_name(cfg), self.unused_reason(handler))
        return self.report(final, best, why)

    def reserve_s(self) -> float:
        """Seconds the unpruned rung and the final measurements are expected to take: the
        longest graph phase of a candidate so far (quantizing and measuring its variants),
        and twice the baseline's measurement (the chosen model's, then the references')."""
        return max(self._graph_s, default=0.0) + 2 * self.ctx.timings.get("baseline", 0.0)

    def unpruned(self) -> None:
        """The unpruned rung (module doc)."""
        ctx = self.ctx
        cand = self.candidate(1.0, fp32_fallback=True)
        log.info("unpruned rung: candidate %s, val %s %.2f, %.3f ms", cand.id,
                 ctx.task.metric_name, cand.val_accuracy, cand.latency_ms)

    def unused_reason(self, handler: techniques.Technique) -> str:
        cands = self.ctx.candidates
        if handler.phase == "module":
            return "no candidate needed it" + (
                "" if "prune" in self.ctx.stages.ran else " (no candidate was pruned)")
        if cands and all(c.id.endswith("-fp32") and c.status == "accuracy" for c in cands):
            return ("not reached: every candidate's FP32 graph was already over the accuracy "
                    "limit")
        return "no candidate reached it"

    def baseline(self) -> None:
        ctx = self.ctx
        with ctx.stage("baseline"):
            ctx.progress("baseline", 0, 1)
            path = ctx.work / "baseline.onnx"
            if ctx.model is not None:
                ctx.task.export(ctx.model, ctx.example, path, ctx.data)
                sizes = counts(ctx, ctx.model)
            else:
                assert ctx.graph is not None
                graph_stats.save_inline(ctx.graph, path)
                sizes = graph_stats.sizes(path)
            ctx.baseline_path = path
            self._built["baseline"] = (path, {}, sizes)
            ctx.baseline = self.stats("baseline", path, test=True, baseline=True)
            ctx.progress("baseline", 1, 1)

    def restore_norm(self) -> None:
        """A converted ONNX model has its BatchNorms folded: restore them before anything
        trains it (``hadmc_core.renorm``)."""
        ctx = self.ctx
        if ctx.model is not None and (ctx.cfg.prune.enabled or ctx.cfg.distill.enabled) \
                and renorm.needs_norm(ctx.model):
            ctx.origin["batchnorm_restored"] = renorm.restore_batchnorm(
                ctx.model, ctx.data.train.x[:256])  # type: ignore[arg-type]

    def prepare(self) -> None:
        ctx = self.ctx
        self.restore_norm()
        for handler, cfg in techniques.ordered(ctx.cfg.techniques()):
            stage = handler.stage_name(cfg)
            if handler.phase == "module" and ctx.model is None:
                handler.without_module(ctx, cfg)
            elif not cfg.enabled:
                ctx.stages.skip(stage, "switched off in the config")
            elif handler.prepare(ctx, cfg):
                self.techs.append((handler, cfg))

    def stats(self, cid: str, path: Path, test: bool, baseline: bool = False) -> ModelStats:
        fp32, precisions, sizes = self._built[cid]
        d = self.ctx.data
        return self.ctx.measurer.stats(path, sizes, fp32_path=fp32, precisions=precisions,
                                       test=test, val=d.val, test_split=d.test,
                                       baseline=baseline)

    def candidate(self, fraction: float, fp32_fallback: bool = False) -> Candidate:
        """Build and measure the candidate of one rung. ``fp32_fallback``: when a graph
        technique cannot bring it within the accuracy limit, its FP32 export is measured
        and returned instead of the last variant over the limit."""
        ctx = self.ctx
        base = ctx.baseline
        assert base is not None and ctx.baseline_path is not None
        cid = f"c{len({c.latency_fraction for c in ctx.candidates})}"
        work = Work(cid, fraction, copy.deepcopy(ctx.model) if ctx.model is not None else None)
        for handler, cfg in self.techs:
            if handler.phase == "module":
                handler.apply(ctx, cfg, work)
        with ctx.stage("export"):
            if work.module is not None:
                work.fp32_path = ctx.task.export(work.module, ctx.example,
                                                 ctx.work / f"{cid}-fp32.onnx", ctx.data)
                work.sizes = counts(ctx, work.module)
                work.onnx_names = quantize.torch_to_onnx_names(work.module, ctx.example,
                                                               work.fp32_path)
            else:
                work.fp32_path, work.sizes = ctx.baseline_path, self._built["baseline"][2]
        fp32 = Variant("fp32", work.fp32_path, -1, {})
        t = time.monotonic()
        try:
            return self.graph_phase(work, fp32, fp32_fallback)
        finally:
            self._graph_s.append(time.monotonic() - t)

    def graph_phase(self, work: Work, fp32: Variant, fp32_fallback: bool) -> Candidate:
        """The candidate's FP32 export checked, then each graph technique's variants
        measured until one is within the accuracy limit (``candidate``)."""
        ctx = self.ctx
        assert work.fp32_path is not None and ctx.baseline is not None
        graph_techs = [(h, c) for h, c in self.techs if h.phase == "graph"]
        if not graph_techs:
            return self.measure(work, fp32)
        with ctx.stage("measure"):
            _, fp32_drop = ctx.measurer.val_drop(work.fp32_path, ctx.data.val)
        if not accuracy_ok(ctx, fp32_drop):
            # Graph techniques can only lose more: back off the pruning instead.
            cand = self.measure(work, fp32)
            cand.status = "accuracy"
            log.info("candidate %s: FP32 val accuracy %.2f (baseline %.2f): backing off",
                     cand.id, cand.val_accuracy, ctx.baseline.val_accuracy)
            return cand
        current = fp32
        for handler, cfg in graph_techs:
            accepted, last = None, None
            for v in handler.variants(ctx, cfg, work, current):
                v.parent = current.candidate
                cand = v.candidate = self.measure(work, v)
                if over_accuracy_limit(ctx, cand):
                    cand.status, last = "accuracy", cand
                handler.measured(ctx, cfg, v, cand)
                if cand.status != "accuracy":
                    accepted = v
                    break
            if accepted is not None:
                current = accepted
            elif last is not None and not handler.optional:
                return self.measure(work, fp32) if fp32_fallback else last
        return current.candidate or self.measure(work, fp32)

    def measure(self, work: Work, v: Variant) -> Candidate:
        ctx = self.ctx
        assert work.fp32_path is not None
        cid = f"{v.parent.id if v.parent else work.cid}-{v.suffix}"
        self._built[cid] = (work.fp32_path, v.precisions, work.sizes)
        with ctx.stage("measure"):
            st = self.stats(cid, v.path, test=False)
        cand = Candidate(cid, work.fraction, v.higher_precision_layers, st.val_accuracy,
                         st.latency_ms, st.size_bytes, st.params, st.macs, work.estimated_ms,
                         measured_on_worker_ms=st.measured_on_worker_ms, path=v.path)
        if st.val_drop is not None:
            cand.val_drop, cand.val_drop_upper = st.val_drop.point, st.val_drop.upper
        cand.layers = self.decisions(work, v)
        ctx.candidates.append(cand)
        log.info("candidate %s: val %s %.2f, %.3f ms (%s), %d bytes", cand.id,
                 ctx.task.metric_name, st.val_accuracy, st.latency_ms,
                 ctx.measurer.source, st.size_bytes)
        return cand

    def decisions(self, work: Work, v: Variant) -> list[LayerDecision]:
        """Per-layer channels and precision of a candidate: PyTorch layers when there is a
        model, the graph's weight nodes otherwise."""
        ctx = self.ctx
        assert work.fp32_path is not None and ctx.baseline_path is not None
        sens, gain = v.info.get("sensitivity", {}), v.info.get("gain_ms", {})
        rows: list[tuple[str, str | None, str, int, int, int | None]] = []
        if work.module is not None:
            if self._original is None:
                assert ctx.model is not None
                self._original = prune.layer_table(ctx.model, ctx.example)
            for name, ly in prune.layer_table(work.module, ctx.example).items():
                orig = self._original.get(name)
                rows.append((name, work.onnx_names.get(name), ly.geom.kind, ly.cin, ly.cout,
                             orig.cout if orig else None))
        else:
            for gname, gl in graph_stats.layers(work.fp32_path).items():
                rows.append((gname, gname, gl.geom.kind, gl.cin, gl.cout, gl.cout))
        out = []
        for name, node, kind, cin, cout, orig_out in rows:
            p = "fp32" if node is None else v.precisions.get(node, "fp32")
            out.append(LayerDecision(
                name, node, kind, cin, cout, orig_out, p, self.executed_as(p),
                sens.get(node) if node else None,
                round(gain.get(node, 0.0), 5) if node else 0.0))
        return out

    def executed_as(self, precision: str) -> str:
        if precision == "int4":
            return f"int4 weights, {self.ctx.backend.executes_as('fp32')} compute"
        return str(self.ctx.backend.executes_as(precision))

    def int4_summary(self, best: Candidate) -> dict[str, Any]:
        info = dict(self.ctx.state.get("int4") or {})
        if not self.ctx.cfg.int4.enabled:
            return {"applied": False, "reason": "switched off in the config"}
        info["applied"] = best.id.endswith("-int4")
        tried = info.get("tried") or []
        if tried and not info["applied"] and "reason" not in info:
            ok = [t for t in tried if t["status"] != "accuracy"]
            info["reason"] = (f"tried, not chosen: {best.id} is faster or fits the "
                              "constraints better" if ok else
                              "tried: over the accuracy limit")
        elif not tried and "reason" not in info:
            info["reason"] = "not tried: no candidate reached the INT4 step"
        return info

    def decision_summary(self, final: ModelStats) -> dict[str, Any]:
        """How the accuracy decisions were made, and whether the validation split is large
        enough for the limit (``decision.split_warning``)."""
        ctx = self.ctx
        cons, n = ctx.cfg.constraints, len(ctx.data.val)
        margins = [c.val_drop_upper - c.val_drop for c in ctx.candidates
                   if c.val_drop is not None and c.val_drop_upper is not None]
        bound = final.val_drop
        out: dict[str, Any] = {
            "rule": "a candidate is within max_accuracy_drop when the one-sided upper "
                    "confidence bound of its validation drop, paired with the baseline on "
                    "the same images, is at most the limit",
            "method": bound.method if bound is not None else "point",
            "confidence": cons.confidence, "validation_images": n,
            "validation_from_training": getattr(ctx.data, "val_from_train", 0),
            "smallest_margin_points": round(min(margins), 4) if margins else None,
            "largest_margin_points": round(max(margins), 4) if margins else None,
        }
        if out["validation_from_training"]:
            out["note"] = (f"{out['validation_from_training']} of the {n} validation images "
                           "come from the end of the training split, which the baseline may "
                           "have been trained on; its advantage there makes a measured drop "
                           "larger, not smaller")
        warning = decision.split_warning(margins, n, cons.max_accuracy_drop, cons.confidence)
        if warning:
            out["warning"] = warning
        return out

    def correction_summary(self, final: ModelStats) -> dict[str, Any] | None:
        """The device's correction as the report keeps it, with the chosen model's
        estimate before it; None when the latency was not corrected."""
        corr = self.ctx.lat.correction
        if corr is None or self.ctx.measurer.source != "device_table":
            return None
        return {**corr.to_dict(), "uncorrected_ms": final.uncorrected_ms}

    def report(self, final: ModelStats, best: Candidate, why: list[str]) -> Report:
        ctx = self.ctx
        base = ctx.baseline
        assert base is not None
        cons, dc = ctx.cfg.constraints, ctx.cfg.distill
        fusion = ctx.state.get("fusion") or {"fused_conv_bn": 0, "max_abs_diff": 0.0,
                                             "relu": f"fused by {ctx.backend.name} at "
                                                     "session creation"}
        model = dict(ctx.origin)
        rule = self.decision_summary(final)
        split_note = [rule["warning"]] if rule.get("warning") else []
        return Report(
            model=model, arch=ctx.spec.to_dict() if ctx.spec is not None else None,
            task=ctx.task.name, metric=ctx.task.metric_name, dataset=ctx.data.name,
            data_adaptation=getattr(ctx.data, "adaptation", None),
            profile=ctx.profile.model_dump(mode="json"), backend=ctx.backend.name,
            latency_source=ctx.measurer.source, latency_model=ctx.lat.source,
            latency_correction=self.correction_summary(final), ladder=self.ladder,
            baseline=base, compressed=final,
            constraints={"max_accuracy_drop": cons.max_accuracy_drop,
                         "latency_budget_ms": cons.latency_budget_ms,
                         "size_budget_mb": cons.size_budget_mb,
                         "time_budget_s": cons.time_budget_s},
            violations=why,
            warnings=[*ctx.warnings, *ctx.task.warnings(base.val_accuracy, ctx.data),
                      *split_note],
            decision=rule, recovery=list(ctx.state.get("recovery", [])),
            candidates=ctx.candidates, layers=best.layers, stages=ctx.stages, fusion=fusion,
            int4_weight_only=self.int4_summary(best),
            distill_alignment=list(ctx.state.get("distill_alignment", [])),
            distill_alignment_source=ctx.state.get("distill_alignment_source"),
            distill_precision="bf16" if use_bf16(dc.precision, dc.device) else "fp32",
            stages_seconds=ctx.timings, config=ctx.cfg.to_dict())


def run_pipeline(ctx: Context) -> Report:
    return Controller(ctx).run()


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


__all__ = ["BudgetError", "Context", "Controller", "choose", "ladder", "make_context",
           "no_progress", "run_pipeline", "violations"]
