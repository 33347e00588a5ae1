"""``compress()``: run the whole pipeline and write model.onnx, report.json, report.png.

The output directory appears only when complete: everything is written to a hidden
temporary sibling that is renamed into place at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hadmc_core import calibrate, prune, quantize, report, search
from hadmc_core import pipeline as pl
from hadmc_core.config import PipelineConfig
from hadmc_core.data import DataSplits
from hadmc_core.errors import HadmcError
from hadmc_core.hal.profile import HardwareProfile
from hadmc_core.models import ArchSpec
from hadmc_core.progress import ProgressFn, no_progress
from hadmc_core.report import ModelStats
from hadmc_core.train import NEAR_CHANCE_POINTS, chance_accuracy, near_chance, use_bf16

log = logging.getLogger(__name__)


@dataclass
class CompressionResult:
    out_dir: Path
    report: dict[str, Any]
    met: bool
    message: str


def _prepare_out(out_dir: Path, overwrite: bool) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise HadmcError(f"output directory {out_dir} exists and is not empty; "
                         "choose another --out or pass --overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))


def _finish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def compress(model: nn.Module, spec: ArchSpec, data: DataSplits, profile: HardwareProfile,
             out_dir: Path, cfg: PipelineConfig | None = None,
             progress: ProgressFn = no_progress, overwrite: bool = False,
             measure_layers: bool | None = None,
             device_table: dict[str, list[float]] | None = None) -> CompressionResult:
    """Compress ``model`` for ``profile`` under ``cfg.constraints``; see module doc."""
    cfg = cfg or PipelineConfig()
    if data.in_channels != spec.in_channels:
        raise HadmcError(f"dataset has {data.in_channels} input channels but the model "
                         f"expects {spec.in_channels}")
    if int(data.train.y.max()) >= spec.num_classes:
        raise HadmcError(f"dataset labels go up to {int(data.train.y.max())} but the model "
                         f"has {spec.num_classes} classes")
    tmp = _prepare_out(out_dir, overwrite)
    work = tmp / "work"
    work.mkdir()
    try:
        ctx = pl.make_context(model, spec, data, profile, cfg, work, progress,
                              measure_layers, device_table)
        rep = _run(ctx)
        best = next(c for c in ctx.candidates if c.chosen)
        shutil.copyfile(best.path, tmp / "model.onnx")  # type: ignore[arg-type]
        pl.cleanup(work)
        report.write_json(tmp / "report.json", rep)
        report.plot(tmp / "report.png", rep)
        _finish(tmp, Path(out_dir))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CompressionResult(Path(out_dir), rep, rep["constraints"]["met"],
                             rep["constraints"]["message"])


def _run(ctx: pl.Context) -> dict[str, Any]:
    base, _ = pl.run_baseline(ctx)
    groups, layers = [], {}
    q_precision = "int8" if ctx.cfg.quantize.enabled and ctx.profile.supports("int8") else "fp32"
    if ctx.cfg.prune.enabled:
        with ctx.stage("sensitivity"):
            groups, layers = prune.analyze(ctx.model, ctx.data.train, ctx.cfg.prune,
                                           ctx.example, ctx.progress)
        if ctx.lat.measure and not ctx.lat.device_table and ctx.cfg.measure.in_graph:
            with ctx.stage("latency"):
                calibrate.fit_latency(
                    ctx.lat, ctx.model, groups, ctx.example, ctx.data.train,
                    sorted({"fp32", q_precision}),
                    quantize.use_reduce_range(ctx.cfg.quantize, ctx.profile), ctx.work,
                    ctx.channel_multiple, ctx.progress)
        with ctx.stage("sensitivity"):
            full = {g.root: g.channels for g in groups}
            shapes = search.Shapes(groups, layers)
            ctx.precision_ratio = (search.estimate_ms(ctx.lat, shapes, full, q_precision)
                                   / search.estimate_ms(ctx.lat, shapes, full, "fp32"))
            ctx.floor_fraction = search.floor_fraction(
                groups, layers, ctx.lat, q_precision, ctx.channel_multiple,
                ctx.cfg.prune.min_keep)
    fusion = None
    rungs, tried = pl.ladder(ctx), 0
    budget = ctx.cfg.constraints.latency_budget_ms
    while rungs and tried < ctx.cfg.max_candidates:
        fraction = rungs.pop(0)
        cand, fused = pl.try_fraction(ctx, fraction, groups, layers, q_precision)
        fusion, tried = fusion or fused, tried + 1
        if not pl.meets(ctx, cand):
            break
        if cand.status != "accuracy" and budget and cand.latency_ms > budget and fraction > 0.02:
            # Accurate but slower than measured budget: the estimate was optimistic, so
            # aim lower in proportion before backing off.
            rungs.insert(0, round(fraction * budget / cand.latency_ms * 0.95, 4))
    best, why = pl.choose(ctx)
    best.chosen = True
    with ctx.stage("measure"):
        final = pl.stats_of(ctx, best.path, (best.params, best.macs), test=True)  # type: ignore[arg-type]
    return _report(ctx, base, final, best, why, fusion)


def baseline_warnings(base: ModelStats, num_classes: int) -> list[str]:
    """What is wrong with the model given to compress (report ``warnings``)."""
    if not near_chance(base.val_accuracy, num_classes):
        return []
    return [f"the baseline's validation top-1 is {base.val_accuracy:.1f}%, within "
            f"{NEAR_CHANCE_POINTS:g} points of chance ({chance_accuracy(num_classes):.1f}% for "
            f"{num_classes} classes): it looks untrained, or trained for other data, so the "
            "accuracy kept by compression means little; train it first (hadmc train)"]


def _report(ctx: pl.Context, base, final, best: pl.Candidate, why: list[str],
            fusion) -> dict[str, Any]:
    cons = ctx.cfg.constraints
    met = not why
    message = ("all constraints met" if met else
               "constraints not met; best result found is reported: " + "; ".join(why))
    comp = final.to_dict()
    return {
        "schema": report.SCHEMA, "created": report.now_iso(), "arch": ctx.spec.to_dict(),
        "dataset": ctx.data.name, "profile": ctx.profile.model_dump(mode="json"),
        "latency_model": ctx.lat.source,
        "baseline": base.to_dict(), "compressed": comp,
        "summary": {
            "accuracy_drop_points": round(base.accuracy - final.accuracy, 3),
            "val_accuracy_drop_points": round(base.val_accuracy - final.val_accuracy, 3),
            "speedup": round(base.latency_ms / final.latency_ms, 3),
            "compression": round(base.size_bytes / final.size_bytes, 3),
        },
        "constraints": {"max_accuracy_drop": cons.max_accuracy_drop,
                        "latency_budget_ms": cons.latency_budget_ms,
                        "size_budget_mb": cons.size_budget_mb, "met": met, "message": message},
        "warnings": baseline_warnings(base, ctx.spec.num_classes),
        "candidates": [c.to_dict() for c in ctx.candidates],
        "layers": best.layers,
        "fusion": {"fused_conv_bn": fusion.fused_pairs if fusion else 0,
                   "max_abs_diff": fusion.max_abs_diff if fusion else 0.0,
                   "relu": "fused by ONNX Runtime at session creation"},
        "int4_weight_only": ("not applied: ONNX Runtime's INT4 weight-only kernel "
                             "(MatMulNBits) covers MatMul, and these models' compute is "
                             "in Conv layers"),
        "distill_precision": ("bf16" if use_bf16(ctx.cfg.distill.precision,
                                                 ctx.cfg.distill.device) else "fp32"),
        "stages_seconds": ctx.timings, "config": ctx.cfg.to_dict(),
        "versions": report.library_versions(),
    }
