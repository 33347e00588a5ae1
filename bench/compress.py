"""Compression benchmark: HAD-MC against FP32, ONNX Runtime PTQ and NNCF PTQ on OpenVINO.

    python bench/compress.py        # ResNet-18 at 0.5 and 2 epochs, MobileNetV2 at 1 epoch
    python bench/compress.py --baselines resnet18:0.5 --runtimes openvino,onnxruntime

For each baseline (a built-in architecture, small stem, trained by ``hadmc train`` on
Fashion-MNIST for the given epochs; cached in HADMC_CACHE_DIR/bench/compress), the rows a
user weighs, built and measured in one run on this machine:

- ONNX Runtime FP32 and OpenVINO FP32 (the exported file as is);
- PTQ-INT8 with ONNX Runtime's ``quantize_static`` defaults (what a user tries first on
  ONNX Runtime);
- NNCF post-training INT8 on OpenVINO (``nncf.quantize`` defaults, 300 calibration
  images: the five-second alternative on x86);
- HAD-MC for each runtime of ``--runtimes`` (default OpenVINO, the faster FP32 runtime
  here): ``hadmc compress --model ARCH --weights W`` through the CLI as a subprocess, with
  the profile whose runtime it is and ``--time-budget-s`` a minute under the 20-minute
  job limit, so the job wall time is what a user waits;
- ``--l1``: L1-uniform pruning of half of every group with plain fine-tuning of the same
  budget, FP32 on ONNX Runtime (the single-technique row).

Latency: batch 1, threads = cores, each row run by its runtime, one session open at a
time, rounds interleaved across all rows of a baseline, median of all runs. Accuracy:
top-1 on the Fashion-MNIST test split (10,000 images) from the runtime's outputs.
``--time-only`` re-times and re-scores the rows of the last run without building them.
Results go to bench/results/compress.json and a Markdown table on stdout, with each
target of the docs checked.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import CACHE as BENCH_CACHE  # noqa: E402
from common import PTQ_NNCF, chosen, hadmc_cli, machine, ptq_rows, size_of, time_rows, top1  # noqa: E402

CACHE = BENCH_CACHE / "compress"
PROFILES = {"openvino": "local-openvino", "onnxruntime": "local"}
# Targets against NNCF PTQ INT8 on OpenVINO and of size, per architecture; the drop and
# the job time hold for all.
VS_NNCF = {"resnet18": 2.5, "mobilenetv2": 1.5}
MIN_COMPRESSION = {"resnet18": 12.0}
MAX_DROP, MAX_JOB_S = 0.5, 1200.0
#: the jobs' --time-budget-s: the job limit less a minute for what the budget does not
#: count (interpreter start, imports, loading the data and the model)
TIME_BUDGET_S = MAX_JOB_S - 60


def baseline(arch: str, epochs: float) -> tuple[Path, float]:
    """``hadmc train`` of ``arch`` (small stem) for ``epochs`` (cached); weights, seconds."""
    path = CACHE / f"{arch}-e{epochs:g}.safetensors"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return path, json.loads(meta.read_text())["train_s"]
    CACHE.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hadmc_core.cli", "train", "--arch", arch,
                    "--stem", "small", "--data", "fashion-mnist", "--epochs", f"{epochs:g}",
                    "--out", str(path), "--quiet"], check=True)
    train_s = time.perf_counter() - t
    meta.write_text(json.dumps({"train_s": train_s}))
    return path, train_s


def build_rows(arch: str, weights: Path, data, args, work: Path
               ) -> tuple[dict[str, tuple[Path, str]], dict[str, float], dict[str, dict]]:
    """Every row's file and runtime, its build seconds, and the HAD-MC reports."""
    import torch

    from hadmc_core.models import load_model
    from hadmc_core.onnx_io import export_onnx

    work.mkdir(parents=True, exist_ok=True)
    model = load_model(weights)[0].eval()
    fp32 = export_onnx(model, torch.from_numpy(data.val.x[:1]), work / "fp32.onnx")
    rows = {"ONNX Runtime FP32": (fp32, "onnxruntime"), "OpenVINO FP32": (fp32, "openvino")}
    walls = dict.fromkeys(rows, 0.0)
    built, built_s, errors = ptq_rows(fp32, work, data.train.x[:300], batch=32)
    if errors:
        raise SystemExit(f"a reference row could not be built: {errors}")
    rows.update(built)
    walls.update(built_s)
    model_args = ["--model", arch, "--weights", str(weights)]
    reports = {}
    jobs = [(f"HAD-MC for {_runtime_name(r)}", PROFILES[r], r, []) for r in args.runtimes]
    if args.l1:
        l1 = work / "l1.json"
        l1.write_text(json.dumps({
            "prune": {"importance": "l1", "uniform_ratio": 0.5},
            "distill": {"alpha_kd": 0.0, "beta_feature": 0.0},
            "quantize": {"enabled": False}, "measure": {"references": False}}))
        jobs.append(("L1-uniform 50% + fine-tune", "local", "onnxruntime",
                     ["--config", str(l1)]))
    for label, profile, runtime, more in jobs:
        out = work / label.split()[0].lower() / runtime
        drop = 100.0 if more else args.max_accuracy_drop
        budget = [] if more else ["--time-budget-s", f"{TIME_BUDGET_S:g}"]
        print(f"== {arch}: {label}", flush=True)
        walls[label] = hadmc_cli(model_args, profile, out, drop,
                                 [*more, *budget, *args.extra])
        rows[label] = (out / "model.onnx", runtime)
        reports[label] = json.loads((out / "report.json").read_text())
    return rows, walls, reports


def score(arch: str, epochs: float, rows: dict[str, tuple[Path, str]],
          walls: dict[str, float], reports: dict[str, dict], data, args) -> list[dict]:
    lat = time_rows(rows, (1, *data.test.x.shape[1:]), rounds=args.rounds, runs=args.runs)
    fp32 = rows["ONNX Runtime FP32"][0]
    base_acc = top1(fp32, "onnxruntime", data.test)
    base_size = size_of(fp32)
    out = []
    for key, (path, runtime) in rows.items():
        acc = top1(path, runtime, data.test)
        rep = reports.get(key)
        out.append({
            "baseline": f"{arch} {epochs:g} ep", "arch": arch, "epochs": epochs, "row": key,
            "runtime": runtime, "path": str(path), "accuracy": round(acc, 2),
            "delta_points": round(acc - base_acc, 2), "latency_ms": round(lat[key], 3),
            "speedup": round(lat["ONNX Runtime FP32"] / lat[key], 2),
            "vs_ov_fp32": round(lat["OpenVINO FP32"] / lat[key], 2),
            "vs_nncf": round(lat[PTQ_NNCF] / lat[key], 2),
            "size_mb": round(size_of(path) / 1e6, 3),
            "compression": round(base_size / size_of(path), 2), "wall_s": round(walls[key], 1),
            "stages_seconds": rep.get("stages_seconds") if rep else None,
            "chosen": chosen(rep) if rep else None,
            "constraints_met": rep["constraints"]["met"] if rep else None})
    return out


def targets(rows: list[dict]) -> list[dict]:
    """Each HAD-MC row against the docs' targets: vs NNCF, drop, compression, job time."""
    checks = []
    for r in rows:
        if not r["row"].startswith("HAD-MC"):
            continue
        need, smaller = VS_NNCF.get(r["arch"]), MIN_COMPRESSION.get(r["arch"])
        tests = [(f"vs NNCF >= {need}x", need is None or r["vs_nncf"] >= need, r["vs_nncf"]),
                 (f"test delta >= -{MAX_DROP} points", r["delta_points"] >= -MAX_DROP,
                  r["delta_points"])]
        if smaller is not None:
            tests.append((f"compression >= {smaller}x", r["compression"] >= smaller,
                          r["compression"]))
        tests.append((f"job <= {MAX_JOB_S:.0f} s", r["wall_s"] <= MAX_JOB_S, r["wall_s"]))
        for name, ok, got in tests:
            checks.append({"baseline": r["baseline"], "row": r["row"], "target": name,
                           "measured": got, "met": bool(ok)})
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baselines", default="resnet18:0.5,resnet18:2,mobilenetv2:1",
                    help="ARCH:EPOCHS,... (built-in architectures, small stem)")
    ap.add_argument("--runtimes", default="openvino",
                    help="HAD-MC rows: the runtimes to compress for (openvino, onnxruntime)")
    ap.add_argument("--l1", action="store_true", help="add the L1-uniform pruning row")
    ap.add_argument("--max-accuracy-drop", type=float, default=MAX_DROP)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--train-only", action="store_true",
                    help="train (or find cached) the baselines and stop")
    ap.add_argument("--time-only", action="store_true",
                    help="re-time and re-score the last run's rows (nothing is built)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compress.json")
    ap.add_argument("extra", nargs="*", help="extra arguments for hadmc compress (after --)")
    args = ap.parse_args()
    args.runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    for r in args.runtimes:
        if r not in PROFILES:
            raise SystemExit(f"unknown runtime {r!r}; choose from {', '.join(PROFILES)}")
    baselines = []
    for item in args.baselines.split(","):
        arch, _, epochs = item.partition(":")
        try:
            baselines.append((arch.strip(), float(epochs)))
        except ValueError:
            raise SystemExit(f"--baselines: {item!r} is not ARCH:EPOCHS") from None
    from hadmc_core.data import load_dataset

    data = load_dataset("fashion-mnist")
    last = json.loads(args.out.read_text()) if args.time_only else None
    rows: list[dict] = []
    trained: dict[str, float] = {}
    for arch, epochs in baselines:
        weights, train_s = baseline(arch, epochs)
        trained[f"{arch} {epochs:g} ep"] = round(train_s, 1)
        print(f"== {arch} {epochs:g} ep: trained in {train_s:.0f} s -> {weights}", flush=True)
        if args.train_only:
            continue
        if last is not None:
            old = [r for r in last["rows"] if r["baseline"] == f"{arch} {epochs:g} ep"]
            if not old:
                raise SystemExit(f"--time-only: the last run has no {arch} {epochs:g} ep rows")
            built = {r["row"]: (Path(r["path"]), r["runtime"]) for r in old}
            walls = {r["row"]: r["wall_s"] for r in old}
            reports = {k: json.loads((p.parent / "report.json").read_text())
                       for k, (p, _) in built.items() if k.startswith(("HAD-MC", "L1"))}
        else:
            built, walls, reports = build_rows(arch, weights, data, args,
                                               CACHE / "work" / f"{arch}-e{epochs:g}")
        rows += score(arch, epochs, built, walls, reports, data, args)
        write(args, rows, trained)
    if rows:
        print(table(rows))
        for c in targets(rows):
            print(f"{'met ' if c['met'] else 'MISS'} {c['baseline']}, {c['row']}: "
                  f"{c['target']} (measured {c['measured']})")
        print(f"\nmachine: {machine()}")


def write(args, rows: list[dict], trained: dict[str, float]) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(
        {"rows": rows, "targets": targets(rows), "train_s": trained, "machine": machine(),
         "timing": "batch 1, threads = cores, one session open at a time, interleaved rounds",
         "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))


def table(rows: list[dict]) -> str:
    head = ("| baseline | row | top-1 % | Δ points | latency ms | vs ORT FP32 | vs OV FP32 "
            "| vs NNCF | size MB | compression × | job wall s |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['baseline']} | {r['row']} | {r['accuracy']:.2f} | "
             f"{r['delta_points']:+.2f} | {r['latency_ms']:.3f} | {r['speedup']:.2f}x | "
             f"{r['vs_ov_fp32']:.2f}x | {r['vs_nncf']:.2f}x | {r['size_mb']:.3f} | "
             f"{r['compression']:.1f} | {r['wall_s']:.0f} |" for r in rows]
    return "\n".join([head, *lines])


def _runtime_name(runtime: str) -> str:
    return {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}[runtime]


if __name__ == "__main__":
    main()
