"""Recovery of an aggressively pruned candidate: what each part of the recipe adds.

    python bench/recovery.py                     # ResNet-18 small stem, width 0.25
    python bench/recovery.py --width 1.0 --train-images 55000 --baseline-epochs 2

One baseline (trained once, cached), pruned once with Taylor importance keeping the same
fraction of every channel group; then the same pruned student is recovered with each
recipe below, from the same starting weights, and scored in PyTorch (FP32) on the
Fashion-MNIST test split (10,000 images). Rows:

- ``default``: distillation as configured by default (2 epochs of a 12,000-image subset,
  one-cycle learning rate);
- ``+ scaled epochs``: epochs x (1 + removed_scale x the MACs fraction removed);
- ``+ logits over all images``: the same steps, teacher logits over every training image
  (features on the subset only);
- the schedule swapped (cosine, constant) on the scaled recipe.

Each row's drop from the baseline on test comes with its paired 95 % upper bound
(``hadmc_core.decision``), and each row's gain over ``default`` with a paired 95 % interval
on the same test images, so a difference within noise reads as such. Results go to
bench/results/recovery.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from hadmc_core import decision, prune
from hadmc_core import distill as kd
from hadmc_core.config import DistillConfig, PruneConfig
from hadmc_core.data import Split, load_dataset
from hadmc_core.models import ArchSpec, build_model, load_weights, read_weights, save_weights
from hadmc_core.settings import get_settings
from hadmc_core.techniques.distill import recovery_epochs
from hadmc_core.train import TrainConfig, batches, fit, use_bf16

ROOT = Path(__file__).resolve().parents[1]
CACHE = get_settings().cache_dir / "bench"


@torch.no_grad()
def correct(model: torch.nn.Module, split: Split) -> np.ndarray:
    """Per-image top-1 correctness, 100 or 0 (the task's per-image results)."""
    model.eval()
    out = [model(x).argmax(1).numpy() for x, _ in batches(split, 512, shuffle=False)]
    return np.where(np.concatenate(out) == split.y, 100.0, 0.0)


def baseline(args: argparse.Namespace, data) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    spec = ArchSpec("resnet18", 1, 10, "small", args.width)
    path = CACHE / (f"recovery-r18w{args.width:g}-n{args.train_images}"
                    f"-e{args.baseline_epochs:g}.safetensors")
    model = build_model(spec)
    if path.exists():
        load_weights(model, read_weights(path)[0])
        return model.eval()
    train = Split(data.train.x[:args.train_images], data.train.y[:args.train_images])
    fit(model, train, TrainConfig(epochs=args.baseline_epochs, batch_size=128, lr=0.1,
                                  bf16=use_bf16("auto", "cpu")))
    CACHE.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, spec)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--train-images", type=int, default=20000)
    ap.add_argument("--baseline-epochs", type=float, default=1.0)
    ap.add_argument("--keep", type=float, default=0.35, help="fraction of channels kept")
    ap.add_argument("--removed-scale", type=float, default=2.0)
    ap.add_argument("--samples", type=int, default=12000,
                    help="distillation subset (distill.samples; the default config's 12000)")
    ap.add_argument("--logit-samples", type=int, default=0,
                    help="images with teacher logits in the 'logits' row (0: all)")
    ap.add_argument("--rows", default="default,scaled,logits,cosine,constant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "recovery.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist")
    t0 = time.perf_counter()
    teacher = baseline(args, data)
    example = torch.from_numpy(data.val.x[:2])
    base_test = correct(teacher, data.test)
    print(f"baseline: test {base_test.mean():.2f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    groups, _ = prune.analyze(teacher, data.train, PruneConfig(calib_batches=8), example)
    keep = {g.root: max(1, round(g.channels * args.keep)) for g in groups}
    student0 = prune.apply(teacher, groups, keep, example)
    removed = 1 - prune.count_macs(student0, example) / prune.count_macs(teacher, example)
    pruned_test = correct(student0, data.test).mean()
    print(f"pruned: keep {args.keep:g} of channels, {removed:.1%} of MACs removed, "
          f"test {pruned_test:.2f} before recovery", flush=True)
    default = DistillConfig(samples=args.samples)
    scaled_epochs = recovery_epochs(
        DistillConfig(removed_scale=args.removed_scale, max_epochs=100), removed)
    recipes = {
        "default": (default, default.epochs),
        "scaled": (default, scaled_epochs),
        "logits": (DistillConfig(samples=args.samples,
                                 logit_samples=args.logit_samples or None), scaled_epochs),
        "cosine": (DistillConfig(samples=args.samples, schedule="cosine"), scaled_epochs),
        "constant": (DistillConfig(samples=args.samples, schedule="constant"), scaled_epochs),
    }
    logit_n = args.logit_samples or len(data.train)
    names = {"default": f"default (2 epochs of a {args.samples}-image subset, one-cycle)",
             "scaled": f"+ scaled epochs ({scaled_epochs:.2f})",
             "logits": f"+ scaled + teacher logits over {logit_n} training images",
             "cosine": "scaled, cosine schedule", "constant": "scaled, constant lr"}
    caches: dict[bool, kd.TeacherCache] = {}
    rows, results = [], {}
    for key in args.rows.split(","):
        cfg, epochs = recipes[key]
        wide = cfg.logit_samples != 0
        t = time.perf_counter()
        if wide not in caches:
            caches[wide] = kd.cache_teacher(teacher, data.train, cfg)
        student = copy.deepcopy(student0)
        kd.distill(student, caches[wide], cfg, epochs=epochs)
        seconds = time.perf_counter() - t
        test = correct(student, data.test)
        results[key] = test
        drop = decision.paired_mean_bound(base_test, test, 0.95)
        row = {"row": names[key], "epochs": round(epochs, 3),
               "test": round(test.mean(), 2), "test_drop": round(drop.point, 2),
               "test_drop_upper95": round(drop.upper, 2), "seconds": round(seconds, 1)}
        if key != "default" and "default" in results:
            gain = decision.paired_mean_bound(test, results["default"], 0.975)
            low = -decision.paired_mean_bound(results["default"], test, 0.975).upper
            row["gain_vs_default"] = round(gain.point, 2)
            row["gain_95ci"] = [round(low, 2), round(gain.upper, 2)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"args": {k: str(v) for k, v in vars(args).items()},
           "baseline": {"test": round(base_test.mean(), 2)},
           "removed_macs_fraction": round(removed, 4), "pruned_test": round(pruned_test, 2),
           "rows": rows, "machine": "2 cores, shared with other jobs (loaded)"}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print("\n| recipe | epochs | test top-1 | test drop (95% upper) | gain vs "
          "default (95% CI) | s |\n|---|---|---|---|---|---|")
    for r in rows:
        ci = (f"{r['gain_vs_default']:+.2f} ({r['gain_95ci'][0]:+.2f}, "
              f"{r['gain_95ci'][1]:+.2f})" if "gain_vs_default" in r else "")
        print(f"| {r['row']} | {r['epochs']} | {r['test']} | {r['test_drop']} "
              f"({r['test_drop_upper95']}) | {ci} | {r['seconds']} |")


if __name__ == "__main__":
    main()
