"""Search strategies compared at equal budget: greedy vs evolution (Optuna NSGA-II) vs rl (PPO).

    python bench/search.py            # trains the model once (cached), then every row

ResNet-18, small stem, on Fashion-MNIST (width and training size from the options; the
trained weights are cached under HADMC_CACHE_DIR/bench). Every strategy searches the same
``hadmc_core.search.Problem``: the Taylor scores of 8 calibration batches, the per-layer INT8
sensitivity (output KL with only that layer fake-quantized, 256 training images) and the
latency model of the profile (``--profile``; a roofline when the profile is not this
machine). For each latency target (a rung of the pipeline's ladder: ``floor + r * (full -
floor)``) every strategy runs

- at equal candidates: evolution and rl evaluate as many candidate plans as greedy scored;
- at equal wall time: evolution and rl get ``--seconds`` (and greedy's own time);

and the table gives, per run, the plan's estimated latency and proxy, the hypervolume of all
candidates it evaluated (estimated ms / full ms vs proxy / proxy of the smallest plan,
reference point 1.1, 1.1), the least estimated latency among its candidates whose proxy is
at most greedy's plan's (the accuracy constraint), candidates and wall seconds. Then each
strategy's equal-candidates plan at the last target is built for real (pruned, BatchNorm
folded, exported, quantized by ONNX Runtime with the plan's precisions; fine-tuned first on
``--finetune-samples`` training images, the last ones, which the model was not trained on)
and *measured*: top-1 on the test split by ONNX Runtime and batch-1 latency (2 threads,
rounds interleaved, median of round medians). Results: bench/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from hadmc_core import prune, quantize, search, tasks
from hadmc_core.config import PruneConfig, QuantizeConfig
from hadmc_core.data import Split, load_dataset
from hadmc_core.fuse import fold_batchnorm
from hadmc_core.hal import load_profile
from hadmc_core.hal.latency import LatencyModel
from hadmc_core.models import ArchSpec, build_model, load_model, save_weights
from hadmc_core.onnx_io import export_onnx, measure_latency, onnx_accuracy
from hadmc_core.settings import get_settings
from hadmc_core.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("greedy", "evolution", "rl")


def trained(width: float, samples: int, epochs: float, data) -> tuple[torch.nn.Module, Path]:
    path = get_settings().cache_dir / "bench" / f"resnet18-w{width}-fmnist-{samples}.safetensors"
    if path.exists():
        return load_model(path)[0], path
    spec = ArchSpec("resnet18", 1, 10, "small", width=width)
    model = build_model(spec)
    fit(model, Split(data.train.x[:samples], data.train.y[:samples]),
        TrainConfig(epochs=epochs, batch_size=128, lr=0.05))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, spec)
    return model, path


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both minimised) up to ``ref``: a sweep over the
    non-dominated staircase, sorted by the first coordinate."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1]):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return sum(((front[i + 1][0] if i + 1 < len(front) else ref[0]) - x) * (ref[1] - y)
               for i, (x, y) in enumerate(front))


def one_run(name: str, pb_args: dict, target: float, budget: search.Budget,
            greedy_proxy: float | None) -> tuple[dict, search.Plan]:
    pb = search.Problem(**pb_args)
    t = time.perf_counter()
    plan = search.run(name, pb, target, budget)
    wall = time.perf_counter() - t
    worst = pb.worst_proxy()
    pts = [(ms / pb.full_ms, px / worst) for ms, px in pb.history]
    limit = plan.proxy if greedy_proxy is None else greedy_proxy
    meeting = [ms for ms, px in pb.history if px <= limit + 1e-12]
    return {"strategy": name, "target_ms": target, "est_ms": plan.estimated_ms,
            "proxy": plan.proxy, "fp32_layers": sum(p == "fp32" for p in
                                                    (plan.precisions or {}).values()),
            "hypervolume": hypervolume(pts, (1.1, 1.1)),
            "best_ms_meeting_proxy": min(meeting) if meeting else None,
            "candidates": plan.evaluated, "wall_s": wall}, plan


def build(model, groups, plan: search.Plan, example, calib, work: Path, tag: str,
          finetune: Split | None = None) -> Path:
    pruned = prune.apply(model, groups, plan.keep, example)
    if finetune is not None:  # plain cross-entropy fine-tuning, the same for every plan
        torch.manual_seed(0)
        fit(pruned, finetune, TrainConfig(epochs=1.0, batch_size=128, lr=0.02))
        pruned.eval()
    pruned = fold_batchnorm(pruned, example).model
    fp32 = export_onnx(pruned, example, work / f"{tag}-fp32.onnx")
    names = quantize.torch_to_onnx_names(pruned, example, fp32)
    keep = [names[n] for n, p in (plan.precisions or {}).items() if p == "fp32" and n in names]
    return quantize.quantize_qdq(fp32, work / f"{tag}-int8.onnx", calib,
                                 QuantizeConfig(calib_samples=256), False, keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--train-samples", type=int, default=4000)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--profile", default="x86-avx512-vnni")
    ap.add_argument("--rungs", default="0.2,0.45")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--test-samples", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--finetune-samples", type=int, default=0,
                    help="fine-tune each built plan on this many training images first")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/search.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    data = load_dataset("fashion-mnist")
    t0 = time.perf_counter()
    model, weights = trained(args.width, args.train_samples, args.epochs, data)
    model.eval()
    example = torch.from_numpy(data.train.x[:1])
    task = tasks.get("classification")
    cfg = PruneConfig()
    groups, layers = prune.analyze(model, data.train, cfg, example, loss=task.loss)
    sens = quantize.sensitivity(model, data.train, QuantizeConfig(), False,
                                score=lambda o, r: float(task.distill_loss(o, r, 1.0)))
    lat = LatencyModel(load_profile(args.profile), measure=False)
    pb_args = {"groups": groups, "layers": layers, "lat": lat, "precision": "int8",
               "round_to": 8, "min_keep": cfg.min_keep, "taylor_scale": 1 / cfg.calib_batches,
               "int8_sensitivity": sens}
    ref = search.Problem(**pb_args)
    floor_ms = ref.latency(ref.floor)
    print(f"setup {time.perf_counter() - t0:.0f} s; latency model {lat.source}; full "
          f"{ref.full_ms:.3f} ms, floor {floor_ms:.3f} ms (estimated)", file=sys.stderr)
    rows, plans = [], {}
    for r in (float(x) for x in args.rungs.split(",")):
        target = floor_ms + r * (ref.full_ms - floor_ms)
        g_row, g_plan = one_run("greedy", pb_args, target, search.Budget(), None)
        g_row.update(rung=r, budget="greedy's own")
        rows.append(g_row)
        plans[(r, "greedy")] = g_plan
        for name in ("evolution", "rl"):
            row, plan = one_run(name, pb_args, target,
                                search.Budget(trials=g_plan.evaluated), g_plan.proxy)
            row.update(rung=r, budget=f"{g_plan.evaluated} candidates")
            rows.append(row)
            plans[(r, name)] = plan
            for secs in sorted({round(g_row["wall_s"], 2), args.seconds}):
                row, _ = one_run(name, pb_args, target,
                                 search.Budget(trials=10**7, seconds=secs), g_plan.proxy)
                row.update(rung=r, budget=f"{secs:g} s")
                rows.append(row)
        print(json.dumps([x for x in rows if x["rung"] == r]), file=sys.stderr)
    # Measured: each strategy's equal-candidates plan at the last rung, built for real.
    last = float(args.rungs.split(",")[-1])
    work = get_settings().cache_dir / "bench" / "search-models"
    work.mkdir(parents=True, exist_ok=True)
    calib = Split(data.train.x[:256], data.train.y[:256])
    test = Split(data.test.x[:args.test_samples], data.test.y[:args.test_samples])
    n_ft = args.finetune_samples
    ft = Split(data.train.x[-n_ft:], data.train.y[-n_ft:]) if n_ft else None
    paths = {n: build(model, groups, plans[(last, n)], example, calib, work, n, ft)
             for n in STRATEGIES}
    base = export_onnx(model, example, work / "baseline.onnx")
    measured = {n: {"top1": onnx_accuracy(p, test, threads=2)} for n, p in paths.items()}
    measured["baseline-fp32"] = {"top1": onnx_accuracy(base, test, threads=2)}
    allp = {**paths, "baseline-fp32": base}
    rounds: dict[str, list[float]] = {n: [] for n in allp}
    for _ in range(args.rounds):
        for n, p in allp.items():
            rounds[n].append(measure_latency(p, tuple(example.shape), runs=100, warmup=20,
                                             threads=2).median_ms)
    for n in allp:
        measured[n]["latency_ms"] = statistics.median(rounds[n])
    result = {"machine": platform.processor() or platform.machine(), "weights": str(weights),
              "width": args.width, "train_samples": args.train_samples,
              "profile": args.profile, "latency_model": lat.source,
              "full_ms_estimated": ref.full_ms, "floor_ms_estimated": floor_ms,
              "rows": rows, "measured_rung": last, "measured": measured,
              "finetune_samples": n_ft,
              "command": " ".join(sys.argv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| rung | strategy | budget | est. ms | proxy | FP32 layers | hypervolume | "
          "best est. ms at proxy <= greedy's | candidates | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        best = "-" if x["best_ms_meeting_proxy"] is None else f"{x['best_ms_meeting_proxy']:.4f}"
        print(f"| {x['rung']} | {x['strategy']} | {x['budget']} | {x['est_ms']:.4f} | "
              f"{x['proxy']:.4f} | {x['fp32_layers']} | {x['hypervolume']:.4f} | {best} | "
              f"{x['candidates']} | {x['wall_s']:.2f} |")
    print(f"\n| model (rung {last}, equal candidates) | top-1 (measured) | "
          "latency ms (measured) |")
    print("|---|---|---|")
    for n, m in measured.items():
        print(f"| {n} | {m['top1']:.2f} | {m['latency_ms']:.3f} |")
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
