"""Detection benchmark: FP32 vs PTQ-INT8 (ONNX Runtime, NNCF) vs L1 pruning vs HAD-MC.

    python bench/detect.py                   # yolo-s on fashion-mnist-scenes (trains once, cached)
    python bench/detect.py --model yolo-n --train-epochs 1 --images 256 --eval-images 64 \\
        --image-size 64 --distill-epochs 0.5 --distill-samples 128   # a quick check

Rows, all built and measured in one run on this machine:

- FP32: the trained detector's exported graph (decoding and NMS inside), ONNX Runtime;
- PTQ-INT8 (ONNX Runtime defaults): ``quantize_static`` with its defaults on the whole
  exported graph, one calibration image per batch (what a user tries first);
- NNCF PTQ-INT8 on OpenVINO: ``nncf.quantize`` with its defaults on the OpenVINO model of
  the exported graph (``hadmc_core.references.nncf_int8``), run by OpenVINO;
- L1-uniform pruning: every prunable group at half its channels by L1 magnitude, then
  plain fine-tuning with the detection loss for the same budget as HAD-MC's recovery
  (``--distill-epochs`` x ``--distill-samples``, scaled by the MACs removed as the
  pipeline does), FP32, ONNX Runtime;
- HAD-MC full: ``compress(..., task="detect")`` under ``--max-map-drop`` for this
  machine's profile (its runtime).

Accuracy: mAP@0.5 and mAP@0.5:0.95 by pycocotools' COCOeval on the test split, from each
row's runtime outputs (detections after NMS). Latency: batch 1, threads = cores, on real
test images (post-processing included: NMS cost depends on what the image holds), each
row timed by its runtime; one session open at a time, ``--rounds`` interleaved rounds, the
median of all runs. A failing row (a quantizer that cannot handle the graph) is kept with
its error. Results go to bench/results/detect.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import CACHE as BENCH_CACHE  # noqa: E402
from common import PTQ_NNCF, PTQ_ORT, machine, printer, ptq_rows, size_of  # noqa: E402

CACHE = BENCH_CACHE / "detect"


def trained(args: argparse.Namespace, data: Any) -> tuple[Any, float]:
    """The detector trained on the scenes' training split (cached); its training seconds."""
    import torch

    from hadmc_core.models import ArchSpec, load_model, save_weights
    from hadmc_core.models.yolo import YOLO
    from hadmc_core.train import TrainConfig, fit_detector

    tag = f"{args.model}-scenes{args.image_size}-n{args.images}-e{args.train_epochs:g}"
    path, meta = CACHE / f"{tag}.safetensors", CACHE / f"{tag}.json"
    if path.exists() and meta.exists():
        return load_model(path)[0].eval(), json.loads(meta.read_text())["train_s"]
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = YOLO(3, data.num_classes, size=args.model.split("-")[1])
    t = time.perf_counter()
    fit_detector(model, data.train, TrainConfig(epochs=args.train_epochs, batch_size=32,
                                                lr=0.01), progress=printer("train"))
    train_s = time.perf_counter() - t
    save_weights(model.eval(), path, ArchSpec(args.model, 3, data.num_classes, "small", 1.0))
    meta.write_text(json.dumps({"train_s": train_s}))
    return model, train_s


def build_rows(args: argparse.Namespace, model: Any, data: Any, work: Path
               ) -> tuple[dict[str, tuple[Path, str]], dict[str, float], dict[str, str],
                          dict[str, Any]]:
    """Every row's model file and runtime, its build wall seconds, the error of each row
    that could not be built, and the compression reports."""
    import torch

    from hadmc_core.compress import compress
    from hadmc_core.config import PipelineConfig
    from hadmc_core.hal import detect_profile
    from hadmc_core.tasks.detection_export import export_detector

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows: dict[str, tuple[Path, str]] = {}
    walls: dict[str, float] = {}
    example = torch.from_numpy(data.val.x[:1])
    fp32 = export_detector(model, example, work / "fp32.onnx", list(data.class_names))
    rows["FP32"], walls["FP32"] = (fp32, "onnxruntime"), 0.0
    built, built_s, errors = ptq_rows(fp32, work, data.train.x[:args.calib_images], batch=1)
    rows.update(built)
    walls.update(built_s)
    distill = {"epochs": args.distill_epochs, "samples": args.distill_samples,
               "batch_size": 32}
    quick = {"measure": {"references": False}, "max_candidates": args.max_candidates}
    l1 = PipelineConfig.from_dict({
        "prune": {"importance": "l1", "uniform_ratio": 0.5},
        "distill": {**distill, "alpha_kd": 0.0, "beta_feature": 0.0},
        "quantize": {"enabled": False}, "constraints": {"max_accuracy_drop": 100.0},
        **quick})
    full = PipelineConfig.from_dict({
        "distill": distill, "constraints": {"max_accuracy_drop": args.max_map_drop},
        **quick})
    reports = {}
    for name, cfg in (("L1-uniform 50% + fine-tune", l1), ("HAD-MC full", full)):
        t = time.perf_counter()
        res = compress(model, data, detect_profile(), work / name.split()[0], cfg,
                       progress=printer(name), task="detect", overwrite=True)
        walls[name] = time.perf_counter() - t
        rows[name] = (res.out_dir / "model.onnx", str(res.report.get("backend") or
                                                      "onnxruntime"))
        reports[name] = res.report
    return rows, walls, errors, reports


def time_rows(rows: dict[str, tuple[Path, str]], images: np.ndarray, rounds: int,
              runs: int, threads: int) -> dict[str, float]:
    """Median batch-1 latency per row on real images; one session open at a time, rounds
    interleaved (``hadmc_core.backends.time_runs``, the project's timing loop)."""
    from hadmc_core import backends

    samples: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(rounds):
        for key, (path, runtime) in rows.items():
            sess = backends.get(runtime).open(path, threads, batch=1)
            name = sess.input_names[0]
            feeds = itertools.cycle([{name: np.ascontiguousarray(images[i:i + 1])}
                                     for i in range(len(images))])
            t = backends.time_runs(lambda s=sess, f=feeds: s.run(next(f)), runs, 10,
                                   threads=threads)
            samples[key].extend(t.samples)
            del sess
    return {k: statistics.median(v) for k, v in samples.items()}


def score(path: Path, runtime: str, split: Any) -> tuple[float, float]:
    from hadmc_core import backends, tasks
    from hadmc_core.tasks.detection import coco_map

    dets = tasks.get("detect").predict(backends.get(runtime), path, split.x)
    return coco_map(dets, split.y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="yolo-s", choices=["yolo-n", "yolo-s"])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=2000, help="training scenes")
    ap.add_argument("--eval-images", type=int, default=300,
                    help="validation and test scenes, each")
    ap.add_argument("--train-epochs", type=float, default=30.0)
    ap.add_argument("--distill-epochs", type=float, default=4.0)
    ap.add_argument("--distill-samples", type=int, default=2000)
    ap.add_argument("--max-map-drop", type=float, default=1.0)
    ap.add_argument("--max-candidates", type=int, default=4)
    ap.add_argument("--calib-images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--train-only", action="store_true",
                    help="train (or find cached) the detector and stop")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from hadmc_core.backends import default_threads
    from hadmc_core.data.detection import load_detection

    data = load_detection("fashion-mnist-scenes", args.image_size,
                          counts=(args.images, args.eval_images, args.eval_images))
    model, train_s = trained(args, data)
    if args.train_only:
        print(f"trained in {train_s:.0f} s (cached in {CACHE})")
        return
    rows, walls, errors, reports = build_rows(args, model, data, CACHE / "work")
    threads = default_threads()
    lat = time_rows(rows, data.test.x[:32], args.rounds, args.runs, threads)
    base_map, _ = score(*rows["FP32"], data.test)
    base_size, base_lat = size_of(rows["FP32"][0]), lat["FP32"]
    out = []
    for name in ("FP32", PTQ_ORT, PTQ_NNCF,
                 "L1-uniform 50% + fine-tune", "HAD-MC full"):
        if name not in rows:
            out.append({"row": name, "error": errors.get(name), "wall_s": round(walls[name], 1)})
            continue
        path, runtime = rows[name]
        m50, m5095 = score(path, runtime, data.test)
        out.append({"row": name, "runtime": runtime, "map50": round(m50, 2),
                    "map50_95": round(m5095, 2), "delta_map50": round(m50 - base_map, 2),
                    "latency_ms": round(lat[name], 3), "speedup": round(base_lat / lat[name], 2),
                    "size_mb": round(size_of(path) / 1e6, 3),
                    "compression": round(base_size / size_of(path), 2),
                    "wall_s": round(walls[name], 1)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detect.json").write_text(json.dumps(
        {"rows": out, "machine": {**machine(), "threads": threads}, "train_s": round(train_s, 1),
         "args": {k: str(v) for k, v in vars(args).items()},
         "timing": "batch 1, real test images, NMS included, interleaved rounds",
         "hadmc_report": reports.get("HAD-MC full")}, indent=2))
    print(table(out))
    print(f"\nmachine: {machine()}, threads {threads}")


def table(rows: list[dict]) -> str:
    head = ("| row | runtime | mAP@0.5 | mAP@0.5:0.95 | Δ mAP@0.5 | latency ms | speedup "
            "| size MB | compression × | job wall s |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error']} | | | | | | | | "
                         f"{r['wall_s']:.0f} |")
            continue
        lines.append(f"| {r['row']} | {r['runtime']} | {r['map50']:.2f} | {r['map50_95']:.2f} "
                     f"| {r['delta_map50']:+.2f} | {r['latency_ms']:.3f} | {r['speedup']:.2f} "
                     f"| {r['size_mb']:.3f} | {r['compression']:.2f} | {r['wall_s']:.0f} |")
    return "\n".join([head, *lines])


if __name__ == "__main__":
    main()
