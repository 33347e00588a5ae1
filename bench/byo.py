"""Bring your own model: five architectures the zoo lacks, compressed from their ONNX files.

    python bench/byo.py                      # every model (trains each once, cached)
    python bench/byo.py --models vgg11,resnext --epochs 1

For each architecture of ``bench/byo_models.py``: train it briefly on Fashion-MNIST with
plain PyTorch (cached in HADMC_CACHE_DIR/bench/byo), export it to ONNX, then build the
rows a user would compare, in one run on this machine:

- ONNX Runtime FP32 and OpenVINO FP32 (the exported file as is);
- NNCF post-training INT8 on OpenVINO (``nncf.quantize`` with its defaults on 300
  calibration images: what a user tries first);
- HAD-MC for ONNX Runtime and HAD-MC for OpenVINO: ``hadmc compress --model FILE.onnx``
  through the CLI, as a subprocess, with the profile whose runtime is each backend.

Latency: batch 1, threads = cores, each model timed by the runtime it is built for; one
session open at a time, rounds interleaved across all rows of a model, median of all runs.
Accuracy: top-1 on the Fashion-MNIST test split (10,000 images) computed from the
runtime's outputs. Results go to bench/results/byo.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from byo_models import MODELS  # noqa: E402
from common import CACHE as BENCH_CACHE  # noqa: E402
from common import chosen, hadmc_cli, machine, size_of, time_rows, top1  # noqa: E402

from hadmc_core.references import nncf_int8  # noqa: E402

CACHE = BENCH_CACHE / "byo"


def trained_onnx(name: str, data, epochs: float) -> tuple[Path, float]:
    """Train ``name`` briefly (cached) and export it; returns the file and training seconds."""
    import torch

    from hadmc_core.onnx_io import export_onnx
    from hadmc_core.train import TrainConfig, fit

    path = CACHE / f"{name}-e{epochs:g}.onnx"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())["train_s"]
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = MODELS[name](in_channels=data.in_channels, num_classes=data.num_classes)
    t = time.perf_counter()
    fit(model, data.train, TrainConfig(epochs=epochs, batch_size=128, lr=0.05))
    train_s = time.perf_counter() - t
    export_onnx(model, torch.from_numpy(data.val.x[:1]), path)
    meta.write_text(json.dumps({"train_s": train_s}))
    return path, train_s


def bench_model(name: str, data, args) -> list[dict]:
    fp32, train_s = trained_onnx(name, data, args.epochs)
    work = CACHE / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    print(f"== {name}: trained in {train_s:.0f} s -> {fp32}", flush=True)
    rows: dict[str, tuple[Path, str]] = {"ONNX Runtime FP32": (fp32, "onnxruntime"),
                                         "OpenVINO FP32": (fp32, "openvino")}
    walls = {"ONNX Runtime FP32": 0.0, "OpenVINO FP32": 0.0}
    t = time.perf_counter()
    rows["NNCF PTQ INT8 on OpenVINO"] = (
        nncf_int8(fp32, work / "nncf.xml", data.train.x[:300]), "openvino")
    walls["NNCF PTQ INT8 on OpenVINO"] = time.perf_counter() - t
    reports = {}
    for label, profile, runtime in (("HAD-MC for ONNX Runtime", args.ort_profile, "onnxruntime"),
                                    ("HAD-MC for OpenVINO", args.ov_profile, "openvino")):
        out = work / runtime
        walls[label] = hadmc_cli(["--model", str(fp32)], profile, out, args.max_accuracy_drop,
                                 args.extra)
        rows[label] = (out / "model.onnx", runtime)
        reports[label] = json.loads((out / "report.json").read_text())
    lat = time_rows(rows, (1, *data.test.x.shape[1:]), rounds=args.rounds, runs=args.runs)
    base_acc = top1(fp32, "onnxruntime", data.test)
    base_size = fp32.stat().st_size
    nncf_lat = lat["NNCF PTQ INT8 on OpenVINO"]
    out_rows = []
    for key, (path, runtime) in rows.items():
        size = size_of(path)
        acc = top1(path, runtime, data.test)
        rep = next((r for k, r in reports.items() if k == key), None)
        out_rows.append({
            "model": name, "row": key, "runtime": runtime, "accuracy": round(acc, 2),
            "delta_points": round(acc - base_acc, 2), "latency_ms": round(lat[key], 3),
            "speedup": round(lat["ONNX Runtime FP32"] / lat[key], 2),
            "vs_nncf": round(nncf_lat / lat[key], 2), "size_mb": round(size / 1e6, 3),
            "compression": round(base_size / size, 2), "wall_s": round(walls[key], 1),
            "stages": rep.get("stages") if rep else None,
            "chosen": chosen(rep) if rep else None,
            "constraints_met": rep["constraints"]["met"] if rep else None})
    return out_rows


def table(rows: list[dict]) -> str:
    head = ("| model | row | top-1 % | Δ points | latency ms | vs ORT FP32 | vs NNCF | "
            "size MB | job wall s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['model']} | {r['row']} | {r['accuracy']:.2f} | {r['delta_points']:+.2f} | "
             f"{r['latency_ms']:.3f} | {r['speedup']:.2f}x | {r['vs_nncf']:.2f}x | "
             f"{r['size_mb']:.3f} | {r['wall_s']:.0f} |" for r in rows]
    return "\n".join([head, *lines])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-accuracy-drop", type=float, default=1.0)
    ap.add_argument("--ort-profile", default="local",
                    help="profile whose runtime is ONNX Runtime (default: this machine)")
    ap.add_argument("--ov-profile", default="local-openvino",
                    help="profile whose runtime is OpenVINO")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "byo.json")
    ap.add_argument("extra", nargs="*", help="extra arguments for hadmc compress (after --)")
    args = ap.parse_args()
    from hadmc_core.data import load_dataset

    data = load_dataset("fashion-mnist")
    rows: list[dict] = []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        rows += bench_model(name, data, args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "machine": machine(),
                                        "args": {k: str(v) for k, v in vars(args).items()}},
                                       indent=2))
    print(table(rows))
    print(f"\nmachine: {machine()}")


if __name__ == "__main__":
    main()
