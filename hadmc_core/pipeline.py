"""The HAD-MC pipeline: profile -> sensitivity -> pruning -> distillation -> fusion ->
mixed-precision quantization -> export -> measurement, under accuracy-aware control.

The controller walks a ladder of latency targets, most aggressive first. For each it
allocates channels per group against the latency model, prunes, distills, fuses and
quantizes, then measures. If the validation accuracy drop exceeds the limit it first
keeps more layers at higher precision, then backs off to less pruning. The first
candidate within every constraint wins; when none is, the best one found is returned
together with a clear message (``CompressionResult.met`` is False).
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hadmc_core import distill as kd
from hadmc_core import prune, quantize, search
from hadmc_core.config import PipelineConfig
from hadmc_core.data import DataSplits
from hadmc_core.errors import BudgetError, HadmcError
from hadmc_core.fuse import FusionResult, fold_batchnorm
from hadmc_core.hal.latency import LatencyModel, runs_here
from hadmc_core.hal.profile import HardwareProfile
from hadmc_core.models import ArchSpec
from hadmc_core.onnx_io import export_onnx, measure_latency, onnx_accuracy
from hadmc_core.progress import ProgressFn, no_progress
from hadmc_core.report import ModelStats
from hadmc_core.train import TrainConfig, fit, use_bf16

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    id: str
    latency_fraction: float
    higher_precision_layers: int
    val_accuracy: float
    latency_ms: float
    size_bytes: int
    params: int
    macs: int
    estimated_ms: float | None = None
    status: str = "tried"
    chosen: bool = False
    path: Path | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("path", "layers")}


@dataclass
class Context:
    """Everything the stages share for one run."""

    model: nn.Module
    spec: ArchSpec
    data: DataSplits
    profile: HardwareProfile
    cfg: PipelineConfig
    work: Path
    progress: ProgressFn
    example: torch.Tensor
    lat: LatencyModel
    timings: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    teacher: kd.TeacherCache | None = None
    baseline: ModelStats | None = None
    #: estimated latency of the unpruned model at the search precision / at FP32
    precision_ratio: float = 1.0
    #: estimated latency with every group at its floor / of the unpruned model
    floor_fraction: float = 0.0

    @property
    def channel_multiple(self) -> int:
        """Channel counts round to this: the config's ``prune.round_to`` or the profile's."""
        return self.cfg.prune.round_to or self.profile.channel_multiple

    @contextmanager
    def stage(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t, 3)


def make_context(model: nn.Module, spec: ArchSpec, data: DataSplits, profile: HardwareProfile,
                 cfg: PipelineConfig, work: Path, progress: ProgressFn,
                 measure_layers: bool | None = None,
                 device_table: dict[str, list[float]] | None = None) -> Context:
    measure = runs_here(profile) if measure_layers is None else measure_layers
    threads = cfg.measure.threads
    lat = LatencyModel(profile, measure=measure, table=device_table, threads=threads)
    example = torch.from_numpy(data.val.x[:2])
    return Context(model.cpu().eval(), spec, data, profile, cfg, work, progress, example, lat)


def counts(ctx: Context, model: nn.Module) -> tuple[int, int]:
    return prune.count_params(model), prune.count_macs(model, ctx.example)


def stats_of(ctx: Context, onnx_path: Path, sizes: tuple[int, int], test: bool) -> ModelStats:
    m = ctx.cfg.measure
    lat = measure_latency(onnx_path, tuple(ctx.example.shape), m.runs, m.warmup, m.threads)
    return ModelStats(
        accuracy=onnx_accuracy(onnx_path, ctx.data.test) if test else float("nan"),
        val_accuracy=onnx_accuracy(onnx_path, ctx.data.val),
        latency_ms=lat.median_ms, latency_p90_ms=lat.p90_ms,
        size_bytes=onnx_path.stat().st_size, params=sizes[0], macs=sizes[1])


def run_baseline(ctx: Context) -> tuple[ModelStats, Path]:
    with ctx.stage("baseline"):
        ctx.progress("baseline", 0, 1)
        path = export_onnx(ctx.model, ctx.example, ctx.work / "baseline.onnx")
        ctx.baseline = stats_of(ctx, path, counts(ctx, ctx.model), test=True)
        ctx.progress("baseline", 1, 1)
    return ctx.baseline, path


def build_student(ctx: Context, fraction: float, groups, layers, precision: str
                  ) -> tuple[nn.Module, search.Allocation | None]:
    pc = ctx.cfg.prune
    if not pc.enabled or (fraction >= 1.0 and pc.uniform_ratio is None):
        return ctx.model, None
    with ctx.stage("search"):
        alloc = search.allocate(groups, layers, ctx.lat, fraction, precision,
                                round_to=ctx.channel_multiple,
                                min_keep=pc.min_keep, uniform_ratio=pc.uniform_ratio,
                                size_weight=pc.size_weight)
    with ctx.stage("prune"):
        student = prune.apply(ctx.model, groups, alloc.keep, ctx.example)
    dc = ctx.cfg.distill
    if dc.enabled and dc.alpha_kd == 0 and dc.beta_feature == 0:
        with ctx.stage("finetune"):  # plain cross-entropy: no teacher needed
            fit(student, kd.finetune_subset(ctx.data.train, dc),
                TrainConfig(epochs=dc.epochs, batch_size=dc.batch_size, lr=dc.lr,
                            device=dc.device,
                            bf16=use_bf16(dc.precision, dc.device)),
                progress=ctx.progress, stage="finetune")
    elif dc.enabled:
        with ctx.stage("distill"):
            if ctx.teacher is None:
                ctx.teacher = kd.cache_teacher(ctx.model, ctx.data.train, dc, ctx.progress)
            kd.distill(student, ctx.teacher, dc, ctx.progress, stage=f"distill@{fraction:g}")
    return student, alloc


def search_precision(ctx: Context, fused: nn.Module, fp32_path: Path, cid: str,
                     fraction: float, est: float | None) -> Candidate:
    """Try the quantize ladder; return the first variant within the accuracy limit."""
    qc, base = ctx.cfg.quantize, ctx.baseline
    assert base is not None
    limit = ctx.cfg.constraints.max_accuracy_drop
    with ctx.stage("measure"):
        fp32_acc = onnx_accuracy(fp32_path, ctx.data.val)
    if base.val_accuracy - fp32_acc > limit:
        # Quantization can only lose more: back off the pruning instead.
        with ctx.stage("measure"):
            st = stats_of(ctx, fp32_path, counts(ctx, fused), test=False)
        cand = Candidate(f"{cid}-fp32", fraction, -1, st.val_accuracy, st.latency_ms,
                         st.size_bytes, st.params, st.macs, est, status="accuracy",
                         path=fp32_path)
        cand.layers = layer_decisions(ctx, None, {}, 0, prune.layer_table(fused, ctx.example))
        ctx.candidates.append(cand)
        log.info("candidate %s: FP32 val accuracy %.2f (baseline %.2f): backing off",
                 cand.id, st.val_accuracy, base.val_accuracy)
        return cand
    rr = quantize.use_reduce_range(qc, ctx.profile)
    with ctx.stage("quantize"):
        sens = quantize.sensitivity(fused, ctx.data.train, qc, rr, ctx.progress)
        names = quantize.torch_to_onnx_names(fused, ctx.example, fp32_path)
        layers = prune.layer_table(fused, ctx.example)
        gain = {n: ctx.lat.layer_ms(ly.geom, ly.cin, ly.cout, "fp32")
                - ctx.lat.layer_ms(ly.geom, ly.cin, ly.cout, "int8") for n, ly in layers.items()}
        ranking = quantize.rank_layers({n: s for n, s in sens.items() if n in names}, gain)
    cand = None
    for step, n_keep in enumerate(qc.keep_ladder):
        ctx.progress(f"quantize {cid}", step, len(qc.keep_ladder))
        n_keep = min(n_keep, len(ranking.order))
        path = ctx.work / f"{cid}-q{n_keep}.onnx"
        with ctx.stage("quantize"):
            quantize.quantize_qdq(fp32_path, path, ctx.data.train, qc, rr,
                                  [names[n] for n in ranking.order[:n_keep]])
        with ctx.stage("measure"):
            st = stats_of(ctx, path, counts(ctx, fused), test=False)
        cand = Candidate(f"{cid}-q{n_keep}", fraction, n_keep, st.val_accuracy, st.latency_ms,
                         st.size_bytes, st.params, st.macs, est, path=path)
        cand.layers = layer_decisions(ctx, ranking, names, n_keep, layers)
        ctx.candidates.append(cand)
        log.info("candidate %s: val accuracy %.2f, %.3f ms, %d bytes", cand.id,
                 st.val_accuracy, st.latency_ms, st.size_bytes)
        if base.val_accuracy - st.val_accuracy <= limit:
            ctx.progress(f"quantize {cid}", len(qc.keep_ladder), len(qc.keep_ladder))
            return cand
        cand.status = "accuracy"
    assert cand is not None
    return cand


def layer_decisions(ctx: Context, ranking: quantize.Ranking | None, names: dict[str, str],
                    n_keep: int, layers: dict[str, prune.Layer]) -> list[dict[str, Any]]:
    """Per-layer channels and precision; ``ranking=None`` means nothing was quantized."""
    full = prune.layer_table(ctx.model, ctx.example)
    hp = quantize.higher_precision(ctx.profile)
    if ranking is None:
        ranking, names = quantize.Ranking([], {}, {}), {}
    kept = set(ranking.order[:n_keep])
    out = []
    for name, layer in layers.items():
        orig = full.get(name)
        out.append({
            "layer": name, "onnx_node": names.get(name), "kind": layer.geom.kind,
            "in_channels": layer.cin, "out_channels": layer.cout,
            "original_out_channels": orig.cout if orig else None,
            "precision": hp if name in kept or name not in names else "int8",
            "executed_as": "fp32" if name in kept or name not in names else "int8",
            "quant_sensitivity": ranking.sensitivity.get(name),
            "int8_gain_ms_estimate": round(ranking.int8_gain_ms.get(name, 0.0), 5),
        })
    return out


def try_fraction(ctx: Context, fraction: float, groups, layers, precision: str
                 ) -> tuple[Candidate, FusionResult]:
    cid = f"c{len({c.latency_fraction for c in ctx.candidates})}"
    student, alloc = build_student(ctx, fraction, groups, layers, precision)
    with ctx.stage("fuse"):
        fused = fold_batchnorm(student, ctx.example) if ctx.cfg.fuse.enabled else FusionResult(
            student, 0, 0.0)
        if fused.max_abs_diff > ctx.cfg.fuse.tolerance * 10:
            raise HadmcError(f"fusion changed outputs by {fused.max_abs_diff:g}")
        fp32_path = export_onnx(fused.model, ctx.example, ctx.work / f"{cid}-fp32.onnx")
    est = alloc.estimated_ms if alloc else None
    if not ctx.cfg.quantize.enabled:
        with ctx.stage("measure"):
            st = stats_of(ctx, fp32_path, counts(ctx, fused.model), test=False)
        cand = Candidate(f"{cid}-fp32", fraction, -1, st.val_accuracy, st.latency_ms,
                         st.size_bytes, st.params, st.macs, est, path=fp32_path)
        cand.layers = layer_decisions(ctx, None, {}, 0,
                                      prune.layer_table(fused.model, ctx.example))
        ctx.candidates.append(cand)
        return cand, fused
    return search_precision(ctx, fused.model, fp32_path, cid, fraction, est), fused


def ladder(ctx: Context) -> list[float]:
    pc, cons = ctx.cfg.prune, ctx.cfg.constraints
    if not pc.enabled or pc.uniform_ratio is not None:
        return [1.0]
    # Rungs are fractions of the latency pruning can remove (above the floor estimate),
    # so a rung never asks for less than the floor and crushes every layer to it.
    floor = ctx.floor_fraction
    steps = sorted({round(floor + r * (1 - floor), 4) for r in pc.ladder})
    if cons.latency_budget_ms and ctx.baseline:
        # The ladder's fractions are of the unpruned model at the search precision; the
        # budget is measured wall-clock, so scale by the model's FP32-to-INT8 ratio.
        f = min(1.0, cons.latency_budget_ms / ctx.baseline.latency_ms / ctx.precision_ratio)
        steps = sorted({round(f, 3), *[s for s in steps if s > f]})
    return steps


def meets(ctx: Context, c: Candidate) -> list[str]:
    cons, base = ctx.cfg.constraints, ctx.baseline
    assert base is not None
    why = []
    if base.val_accuracy - c.val_accuracy > cons.max_accuracy_drop:
        why.append(f"accuracy drop {base.val_accuracy - c.val_accuracy:.2f} points > "
                   f"{cons.max_accuracy_drop}")
    if cons.latency_budget_ms and c.latency_ms > cons.latency_budget_ms:
        why.append(f"latency {c.latency_ms:.3f} ms > budget {cons.latency_budget_ms} ms")
    if cons.size_budget_mb and c.size_bytes > cons.size_budget_mb * 1e6:
        why.append(f"size {c.size_bytes / 1e6:.2f} MB > budget {cons.size_budget_mb} MB")
    return why


def choose(ctx: Context) -> tuple[Candidate, list[str]]:
    ok = [c for c in ctx.candidates if not meets(ctx, c)]
    if ok:
        return min(ok, key=lambda c: c.latency_ms), []
    acc_ok = [c for c in ctx.candidates if c.status != "accuracy"]
    best = (min(acc_ok, key=lambda c: c.latency_ms) if acc_ok
            else max(ctx.candidates, key=lambda c: c.val_accuracy))
    return best, meets(ctx, best)


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


__all__ = ["BudgetError", "Context", "make_context", "run_baseline", "try_fraction",
           "ladder", "choose", "meets", "no_progress"]
