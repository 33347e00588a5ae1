"""Fit the latency model to layer times measured inside whole models (graph context).

A layer timed alone pays for work that ONNX Runtime removes inside a model: the layout
changes around an integer convolution (NCHW to NHWC and back) and the input quantization.
On ResNet-18 (small stem, batch 1, 2 threads, AVX-512 VNNI) single-layer INT8 timings sum
to 7.9 ms while the whole INT8 model runs in 1.5 ms, and the error is largest for the
layers with the largest activations, which skews the search toward the wrong layers.

So when the profile describes this machine, the pipeline builds the model at a few
uniform widths, folds, exports and quantizes each exactly as it does for a candidate (with
the run's backend), runs them under the backend's per-node profiler, and fits each
geometry's ``a + b * MMACs`` line to the per-layer kernel times
(``LatencyModel.fit_in_graph``). A backend without a profiler leaves the fits as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hadmc_core import prune, quantize, search
from hadmc_core.data import Split
from hadmc_core.fuse import fold_batchnorm
from hadmc_core.hal.latency import LatencyModel, LayerGeom
from hadmc_core.onnx_io import export_onnx
from hadmc_core.progress import ProgressFn, no_progress

log = logging.getLogger(__name__)
Sample = tuple[LayerGeom, int, int, str, float]
#: One calibration model timed whole: precision, its layers (geometry, cin, cout), ms.
Whole = tuple[str, list[tuple[LayerGeom, int, int]], float]


@dataclass
class CalibrationModel:
    """One model of the calibration set: the model at a uniform width, exported (and
    quantized) as a candidate is, at one precision."""

    precision: str
    path: Path
    layers: dict[str, prune.Layer]        # PyTorch layer name -> geometry and widths
    names: dict[str, str]                 # PyTorch layer name -> ONNX node name
    input_shape: tuple[int, ...]          # batch first


def calibration_models(model: nn.Module, groups: list[prune.Group], example: torch.Tensor,
                       calib: Split, precisions: list[str], reduce_range: bool, work: Path,
                       round_to: int, ratios: tuple[float, ...] = (0.0, 0.3, 0.6),
                       progress: ProgressFn = no_progress, backend: Any = None
                       ) -> list[CalibrationModel]:
    """The model at uniform pruning ``ratios``, folded, exported and (for ``int8``)
    quantized by ``backend``, written under ``work``."""
    backend = backend or _default_backend()
    out: list[CalibrationModel] = []
    for i, ratio in enumerate(ratios):
        keep = {g.root: search.round_channels(g.channels * (1 - ratio), round_to, g.channels)
                for g in groups}
        out += build(model, groups, keep if ratio > 0 else None, example, calib, precisions,
                     reduce_range, work / f"latency-{i}", backend)
        progress("latency", i + 1, len(ratios))
    return out


def build(model: nn.Module, groups: list[prune.Group], keep: dict[str, int] | None,
          example: torch.Tensor, calib: Split, precisions: list[str], reduce_range: bool,
          stem: Path, backend: Any) -> list[CalibrationModel]:
    """The model pruned to ``keep`` (None: unpruned), folded, exported to ``stem``-fp32.onnx
    and, for ``int8``, quantized by ``backend`` as a candidate is: one model per precision."""
    student = prune.apply(model, groups, keep, example) if keep is not None else model
    fused = fold_batchnorm(student, example).model
    fp32 = export_onnx(fused, example, stem.with_name(stem.name + "-fp32.onnx"))
    names = quantize.torch_to_onnx_names(fused, example, fp32)
    table = prune.layer_table(fused, example)
    out = []
    for precision in precisions:
        path = fp32
        if precision == "int8":
            path = backend.quantize_int8(fp32, stem.with_name(stem.name + "-int8.onnx"),
                                         calib.x[:64], reduce_range=reduce_range)
        out.append(CalibrationModel(precision, path, table, names, tuple(example.shape)))
    return out


def time_plans(model: nn.Module, groups: list[prune.Group], plans: list[dict[str, int] | None],
               example: torch.Tensor, calib: Split, precision: str, reduce_range: bool,
               threads: int, work: Path, backend: Any, progress: ProgressFn = no_progress
               ) -> list[float]:
    """Whole-model wall-clock ms (median of 60 runs after 10, batch 1) of the model pruned
    to each kept-channel plan (None: unpruned), built as ``build`` does at ``precision``.
    The weights need no training for this: latency depends on the structure alone. Each
    model's files are removed once it is timed."""
    out = []
    for i, keep in enumerate(plans):
        stem = work / f"ladder-{i}"
        models = build(model, groups, keep, example, calib, [precision], reduce_range,
                       stem, backend)
        try:
            m = models[0]
            out.append(backend.time_model(m.path, m.input_shape, 60, 10, threads).median_ms)
        finally:
            for suffix in ("-fp32.onnx", "-int8.onnx"):
                stem.with_name(stem.name + suffix).unlink(missing_ok=True)
        progress("ladder", i + 1, len(plans))
    return out


def profile(models: list[CalibrationModel], threads: int, backend: Any = None,
            whole: list[Whole] | None = None) -> list[Sample]:
    """Per-layer (geometry, cin, cout, precision, ms) of each calibration model under the
    backend's per-node profiler (empty when it has none); with ``whole``, each model's
    whole wall-clock time (median of 60 runs after 10, right after its profile) too."""
    backend = backend or _default_backend()
    samples: list[Sample] = []
    for m in models:
        try:
            times = backend.profile_nodes(m.path, threads)
        except NotImplementedError:
            log.info("backend %s has no per-node profiler; latency model not fitted in "
                     "graph context", backend.name)
            return []
        for tname, oname in m.names.items():
            layer = m.layers.get(tname)
            if layer is not None and oname in times:
                samples.append((layer.geom, layer.cin, layer.cout, m.precision, times[oname]))
        if whole is not None:
            ms = backend.time_model(m.path, m.input_shape, 60, 10, threads).median_ms
            whole.append((m.precision, [(ly.geom, ly.cin, ly.cout)
                                        for ly in m.layers.values()], ms))
    return samples


def _default_backend() -> Any:
    from hadmc_core.backends import get

    return get("onnxruntime")


def in_graph_samples(model: nn.Module, groups: list[prune.Group], example: torch.Tensor,
                     calib: Split, precisions: list[str], reduce_range: bool, threads: int,
                     work: Path, round_to: int, ratios: tuple[float, ...] = (0.0, 0.3, 0.6),
                     progress: ProgressFn = no_progress, backend: Any = None,
                     whole: list[Whole] | None = None) -> list[Sample]:
    """``profile`` of the ``calibration_models``, whose files are removed afterwards."""
    models = calibration_models(model, groups, example, calib, precisions, reduce_range,
                                work, round_to, ratios, progress, backend)
    try:
        return profile(models, threads, backend, whole)
    finally:
        for m in models:
            m.path.unlink(missing_ok=True)


def fit_latency(lat: LatencyModel, model: nn.Module, groups: list[prune.Group],
                example: torch.Tensor, calib: Split, precisions: list[str], reduce_range: bool,
                work: Path, round_to: int, progress: ProgressFn = no_progress,
                backend: Any = None) -> int:
    """Replace ``lat``'s single-layer fits by in-graph ones, and fit what the whole model
    costs beyond its weight layers (``LatencyModel.fit_overhead``); returns keys fitted."""
    whole: list[Whole] = []
    samples = in_graph_samples(model, groups, example, calib, precisions, reduce_range,
                               lat.threads, work, round_to, progress=progress, backend=backend,
                               whole=whole)
    fitted = lat.fit_in_graph(samples)
    if samples:
        lat.fit_overhead(whole)
    log.info("latency model fitted in graph context: %d samples, %d geometries",
             len(samples), fitted)
    return fitted
