"""FP32 vs INT8 latency of the pipeline's own export and quantization, one process:

    python bench/int8_speed.py [--width 1.0] [--rounds 5] [--runs 20]

ResNet-18 (small stem, 1x28x28 input) with its BatchNorms folded, exported by
`hadmc_core.onnx_io.export_onnx`, quantized by `hadmc_core.quantize.quantize_qdq` (static QDQ,
per-channel weights; with and without reduce_range). Latency is batch 1 with ONNX Runtime at
threads = cores, timed round-robin, median. Weights are random: latency does not depend on
them, accuracy is not measured here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hadmc_core import quantize
from hadmc_core.config import QuantizeConfig
from hadmc_core.data import Split
from hadmc_core.fuse import fold_batchnorm
from hadmc_core.models import ArchSpec, build_model
from hadmc_core.onnx_io import export_onnx, session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hadmc-int8-"))
    torch.manual_seed(0)
    model = build_model(ArchSpec("resnet18", 1, 10, "small", args.width)).eval()
    x = torch.randn(2, 1, 28, 28)
    fp32 = export_onnx(fold_batchnorm(model, x).model, x, tmp / "fp32.onnx")
    rng = np.random.default_rng(0)
    calib = Split(rng.standard_normal((256, 1, 28, 28)).astype(np.float32), np.zeros(256, int))
    paths = {"fp32": fp32}
    for rr in (False, True):
        paths[f"int8{' reduce_range' if rr else ''}"] = quantize.quantize_qdq(
            fp32, tmp / f"int8-{rr}.onnx", calib, QuantizeConfig(calib_samples=64),
            reduce_range=rr)
    sessions = {k: session(p) for k, p in paths.items()}
    xi = rng.standard_normal((1, 1, 28, 28)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(10):
            s.run(None, {"input": xi})
    for _ in range(args.rounds):
        for k, s in sessions.items():
            for _ in range(args.runs):
                t = time.perf_counter()
                s.run(None, {"input": xi})
                times[k].append((time.perf_counter() - t) * 1e3)
    base = statistics.median(times["fp32"])
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:18s} {med:7.3f} ms  {base / med:4.2f}x  {paths[k].stat().st_size / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()
