"""Compression benchmark: FP32 vs PTQ-INT8 vs L1 uniform pruning vs the HAD-MC pipeline.

    python bench/compress.py            # trains the baseline once (cached), then all rows

Every latency is measured here, on this CPU, with ONNX Runtime at batch 1, threads =
cores; all rows' models are timed in the same process, interleaved: each round opens one
model's session alone, warms it up and times it, then closes it before the next model, and
the median of all rounds' runs is reported. (Keeping every session open instead slowed the
0.4 ms model by half, 0.62 ms, while barely moving the 5 ms one: the idle sessions' thread
pools compete for the 2 cores.) ``--time-only`` re-times and re-evaluates the models of the
last run without compressing again. Accuracy is top-1 on the Fashion-MNIST test split
(10,000 images) evaluated by ONNX Runtime on the exported file. Results go to
bench/results/compress.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hadmc_core.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
# Trained models outlive the checkout (HADMC_CACHE_DIR, default ~/.cache/hadmc).
CACHE = get_settings().cache_dir / "bench"


def baseline_weights(epochs: float) -> Path:
    path = CACHE / "resnet18-fmnist.safetensors"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "hadmc_core.cli", "train", "--arch", "resnet18",
                        "--stem", "small", "--data", "fashion-mnist", "--epochs", str(epochs),
                        "--out", str(path)], check=True)
    return path


def ptq_default(fp32: Path, out: Path, calib) -> Path:
    """ONNX Runtime static quantization with its default settings."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib.x[i:i + 32]} for i in range(0, 512, 32)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader())
    return out


def time_interleaved(paths: dict[str, Path], shape, rounds: int, runs: int,
                     warmup: int = 10) -> dict[str, float]:
    """Median batch-1 latency per model; one session open at a time, rounds interleaved."""
    from hadmc_core.onnx_io import session

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, p in paths.items():
            s = session(p)
            for _ in range(warmup):
                s.run(None, {"input": x})
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, {"input": x})
                times[k].append((time.perf_counter() - t) * 1e3)
            del s
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline-epochs", type=float, default=2.0)
    ap.add_argument("--max-accuracy-drop", type=float, default=0.5)
    # Fine-tune budget of both pruned rows: 6 passes over a fixed 24k-sample subset.
    ap.add_argument("--distill-epochs", type=float, default=6.0)
    ap.add_argument("--distill-samples", type=int, default=24000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--time-only", action="store_true",
                    help="re-time and re-evaluate the last run's models (no compression)")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("hadmc_core.pipeline").setLevel(logging.INFO)

    from hadmc_core.data import load_dataset
    from hadmc_core.hal import detect_profile
    from hadmc_core.models import load_model
    from hadmc_core.onnx_io import onnx_accuracy

    weights = baseline_weights(args.baseline_epochs)
    data = load_dataset("fashion-mnist")
    model, spec = load_model(weights)
    profile = detect_profile()
    work = CACHE / "work"
    example = __import__("torch").from_numpy(data.val.x[:1])
    if args.time_only:
        last = json.loads((args.out / "compress.json").read_text())
        walls = {r["row"]: r["wall_s"] for r in last["rows"]}
        files = dict(zip(walls, (work / "fp32.onnx", work / "ptq.onnx",
                                 work / "L1" / "model.onnx", work / "HAD-MC" / "model.onnx"),
                         strict=True))
        reports = {"HAD-MC full": last["hadmc_report"]}
        stages = last.get("stages_seconds", {})
    else:
        files, walls, reports = compress_all(args, model, spec, data, profile, work, example)
        stages = {k: r["stages_seconds"] for k, r in reports.items()}
    lat = time_interleaved(files, (1, *example.shape[1:]), rounds=5, runs=20)
    base_acc = onnx_accuracy(files["FP32 baseline"], data.test)
    base_size = files["FP32 baseline"].stat().st_size
    rows = []
    for name, path in files.items():
        acc = onnx_accuracy(path, data.test)
        rows.append({"row": name, "accuracy": round(acc, 2),
                     "delta_points": round(acc - base_acc, 2),
                     "latency_ms": round(lat[name], 3),
                     "speedup": round(lat["FP32 baseline"] / lat[name], 2),
                     "size_mb": round(path.stat().st_size / 1e6, 2),
                     "compression": round(base_size / path.stat().st_size, 2),
                     "wall_s": round(walls[name], 1)})
    machine = {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
               "profile": profile.name}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compress.json").write_text(json.dumps(
        {"rows": rows, "machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
         "stages_seconds": stages, "timing": "interleaved, one session open at a time",
         "hadmc_report": reports["HAD-MC full"]}, indent=2))
    print(table(rows))
    print(f"\nmachine: {machine}")


def compress_all(args, model, spec, data, profile, work: Path, example):
    """Build every row's model in ``work``; returns files, wall seconds and reports."""
    from hadmc_core.compress import compress
    from hadmc_core.config import PipelineConfig
    from hadmc_core.onnx_io import export_onnx

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    files, walls = {}, {}

    files["FP32 baseline"] = export_onnx(model, example, work / "fp32.onnx")
    walls["FP32 baseline"] = 0.0
    t = time.perf_counter()
    files["PTQ-INT8 only"] = ptq_default(files["FP32 baseline"], work / "ptq.onnx", data.train)
    walls["PTQ-INT8 only"] = time.perf_counter() - t

    distill = {"epochs": args.distill_epochs, "samples": args.distill_samples}
    l1 = PipelineConfig.from_dict({
        "prune": {"importance": "l1", "uniform_ratio": 0.5},
        "distill": {**distill, "alpha_kd": 0.0, "beta_feature": 0.0},
        "quantize": {"enabled": False},
        "constraints": {"max_accuracy_drop": 100.0}})
    full = PipelineConfig.from_dict({
        "distill": distill, "constraints": {"max_accuracy_drop": args.max_accuracy_drop}})
    reports = {}
    for name, cfg in (("L1 uniform 50% pruning", l1), ("HAD-MC full", full)):
        t = time.perf_counter()
        res = compress(model, spec, data, profile, work / name.split()[0], cfg,
                       progress=_printer(name), overwrite=True)
        walls[name] = time.perf_counter() - t
        files[name] = res.out_dir / "model.onnx"
        reports[name] = res.report

    return files, walls, reports


def table(rows: list[dict]) -> str:
    head = ("| row | top-1 % | Δ points | latency ms | speedup | size MB | compression × "
            "| pipeline wall s |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['row']} | {r['accuracy']:.2f} | {r['delta_points']:+.2f} | "
             f"{r['latency_ms']:.3f} | {r['speedup']:.2f} | {r['size_mb']:.2f} | "
             f"{r['compression']:.2f} | {r['wall_s']:.0f} |" for r in rows]
    return "\n".join([head, *lines])


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _printer(name: str):
    last = {"stage": None, "t": 0.0}

    def fn(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage != last["stage"] or now - last["t"] > 30 or done == total:
            print(f"[{name}] {stage} {done}/{total}", flush=True)
            last.update(stage=stage, t=now)
    return fn


if __name__ == "__main__":
    main()
