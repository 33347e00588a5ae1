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


def in_graph_samples(model: nn.Module, groups: list[prune.Group], example: torch.Tensor,
                     calib: Split, precisions: list[str], reduce_range: bool, threads: int,
                     work: Path, round_to: int, ratios: tuple[float, ...] = (0.0, 0.3, 0.6),
                     progress: ProgressFn = no_progress, backend: Any = None) -> list[Sample]:
    """Per-layer (geometry, cin, cout, precision, ms) of the model at uniform ``ratios``."""
    if backend is None:
        from hadmc_core.backends import get

        backend = get("onnxruntime")
    samples: list[Sample] = []
    for i, ratio in enumerate(ratios):
        keep = {g.root: search.round_channels(g.channels * (1 - ratio), round_to, g.channels)
                for g in groups}
        student = prune.apply(model, groups, keep, example) if ratio > 0 else model
        fused = fold_batchnorm(student, example).model
        fp32 = export_onnx(fused, example, work / f"latency-{i}-fp32.onnx")
        names = quantize.torch_to_onnx_names(fused, example, fp32)
        table = prune.layer_table(fused, example)
        for precision in precisions:
            path = fp32
            if precision == "int8":
                path = backend.quantize_int8(fp32, work / f"latency-{i}-int8.onnx",
                                             calib.x[:64], reduce_range=reduce_range)
            try:
                times = backend.profile_nodes(path, threads)
            except NotImplementedError:
                log.info("backend %s has no per-node profiler; latency model not fitted in "
                         "graph context", backend.name)
                return []
            for tname, oname in names.items():
                layer = table.get(tname)
                if layer is not None and oname in times:
                    samples.append((layer.geom, layer.cin, layer.cout, precision, times[oname]))
        for leftover in work.glob(f"latency-{i}-*.onnx"):
            leftover.unlink()
        progress("latency", i + 1, len(ratios))
    return samples


def fit_latency(lat: LatencyModel, model: nn.Module, groups: list[prune.Group],
                example: torch.Tensor, calib: Split, precisions: list[str], reduce_range: bool,
                work: Path, round_to: int, progress: ProgressFn = no_progress,
                backend: Any = None) -> int:
    """Replace ``lat``'s single-layer fits by in-graph ones; returns keys fitted."""
    samples = in_graph_samples(model, groups, example, calib, precisions, reduce_range,
                               lat.threads, work, round_to, progress=progress, backend=backend)
    fitted = lat.fit_in_graph(samples)
    log.info("latency model fitted in graph context: %d samples, %d geometries",
             len(samples), fitted)
    return fitted
