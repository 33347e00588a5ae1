"""NNCF INT8 for OpenVINO two ways: quantizing the OpenVINO model vs quantizing the ONNX graph.

    python bench/ov_int8_paths.py                          # resnet18 w1.0, w0.25, vgg11
    python bench/ov_int8_paths.py --models vgg11 --train-steps 0

For each model (ResNet-18 of the zoo with the small stem, 1x28x28, and VGG-11-BN of
``bench/byo_models.py``), exported to ONNX once, it builds the rows:

- ``fp32``: the ONNX file read by OpenVINO;
- ``nncf-ov-ir``: ``nncf.quantize(Core.read_model(onnx))`` saved as IR (what
  ``bench/byo.py``'s NNCF row does, what a user tries first);
- ``nncf-onnx-qdq``: ``nncf.quantize(onnx.load(onnx))`` (NNCF's ONNX backend, CPU target),
  the QDQ ONNX file read by OpenVINO;
- ``hadmc-openvino``: ``OpenVinoBackend.quantize_int8`` (what HAD-MC ships for OpenVINO);
- ``hadmc-openvino-keepK`` (``--keep K,...``): the same with the first K Conv/Gemm nodes
  kept in FP32, as the mixed-precision ladder does (with its own ranking).

Calibration: 300 training images for every row. Latency: batch 1, threads = cores,
``Backend.time_model`` per row, rounds interleaved, median of all runs and the fastest run
(under load the fastest is the closer estimate of the uncontended time). Per row the compiled
model's weight layers by runtime precision, its Reorder/Convert layers and their share of
the profiled time. Accuracy: top-1 on ``--test`` test images from OpenVINO's outputs
(``--train-steps`` SGD steps of batch 128 first, so the ranges are those of a trained net).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from byo_models import MODELS  # noqa: E402

WEIGHT_LAYERS = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul"}


def build(name: str):
    from hadmc_core.models import ArchSpec, build_model

    if name.startswith("resnet18-w"):
        return build_model(ArchSpec("resnet18", width=float(name.removeprefix("resnet18-w"))))
    return MODELS[name](in_channels=1, num_classes=10)


def train(model, data, steps: int) -> None:
    import torch

    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(data.train.x), 128)
        x = torch.from_numpy(data.train.x[idx])
        y = torch.from_numpy(data.train.y[idx]).long()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def nncf_ov_ir(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    import nncf
    import openvino as ov

    items = [calib[i:i + 1] for i in range(len(calib))]
    with contextlib.redirect_stdout(io.StringIO()):
        q = nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset(items),
                          subset_size=len(items))
    ov.save_model(q, str(out))
    return out


def nncf_onnx_qdq(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    import nncf
    import onnx

    items = [calib[i:i + 1] for i in range(len(calib))]
    with contextlib.redirect_stdout(io.StringIO()):
        q = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset(items, lambda a: {"input": a}),
                          subset_size=len(items))
    onnx.save(q, str(out))
    return out


def layers(path: Path) -> dict:
    """Weight layers by runtime precision, Reorder/Convert layers and their profiled share."""
    from hadmc_core.backends import get
    from hadmc_core.backends.openvino import OvSession

    ovb = get("openvino")
    compiled = ovb.compile(path, batch=1, profiling=True)
    prec: Counter[str] = Counter()
    fp32_layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in WEIGHT_LAYERS:
            p = info["runtimePrecision"].astype(str)
            prec[p] += 1
            if p not in ("i8", "u8"):
                fp32_layers.append(op.get_friendly_name())
    sess = OvSession(compiled)
    feeds = sess.example_feeds(seed=1)
    by_type: Counter[str] = Counter()
    n_type: Counter[str] = Counter()
    totals = []
    for _ in range(30):
        sess.run(feeds)
    for _ in range(50):
        sess.run(feeds)
        run = 0.0
        for info in sess.request.get_profiling_info():
            if info.status.name == "EXECUTED":
                ms = info.real_time.total_seconds() * 1e3
                by_type[info.node_type] += ms / 50
                run += ms
        totals.append(run)
    kernels = []
    for info in sess.request.get_profiling_info():
        if info.status.name == "EXECUTED":
            n_type[info.node_type] += 1
            kernels.append(f"{info.node_type}:{info.exec_type}")
    total = sum(by_type.values())
    return {"weight_precisions": dict(prec), "not_int8": fp32_layers, "kernels": kernels,
            "reorders": n_type["Reorder"], "converts": n_type["Convert"],
            "reorder_ms": round(by_type["Reorder"], 4),
            "profiled_ms": round(total, 4), "profiled_min_ms": round(min(totals), 4),
            "by_type_ms": {k: round(v, 4) for k, v in by_type.most_common(6)}}


def top1(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from hadmc_core.backends import get

    logits = get("openvino").predict(path, x)[0]
    return 100.0 * float((logits.argmax(1) == y).mean())


def bench(name: str, data, args, work: Path) -> list[dict]:
    import onnx
    import torch

    from hadmc_core.backends import get
    from hadmc_core.onnx_io import export_onnx

    if name in args.onnx:  # a trained export, e.g. bench/byo.py's cached one
        fp32 = Path(args.onnx[name])
    else:
        model = build(name)
        train(model, data, args.train_steps)
        fp32 = export_onnx(model, torch.from_numpy(data.val.x[:1]), work / f"{name}.onnx")
    calib = data.train.x[:300]
    rows = {"fp32": fp32,
            "nncf-ov-ir": nncf_ov_ir(fp32, work / f"{name}-ov.xml", calib),
            "nncf-onnx-qdq": nncf_onnx_qdq(fp32, work / f"{name}-qdq.onnx", calib),
            "hadmc-openvino": get("openvino").quantize_int8(
                fp32, work / f"{name}-hadmc.onnx", calib)}
    convs = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type in ("Conv", "Gemm")]
    for k in args.keep:
        rows[f"hadmc-openvino-keep{k}"] = get("openvino").quantize_int8(
            fp32, work / f"{name}-keep{k}.onnx", calib, keep_fp32=convs[:k])
    samples: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.rounds):
        for key, path in rows.items():
            t = get("openvino").time_model(path, (1, 1, 28, 28), runs=args.runs, warmup=10)
            samples[key].extend(t.samples)
    lat = {k: statistics.median(v) if v else float("nan") for k, v in samples.items()}
    # Under load a run is often preempted: the fastest run of all is the closer estimate of
    # the uncontended time (reported beside the median).
    fastest = {k: min(v) if v else float("nan") for k, v in samples.items()}
    x, y = data.test.x[:args.test], data.test.y[:args.test]
    out = []
    for key, path in rows.items():
        out.append({"model": name, "row": key, "latency_ms": round(lat[key], 4),
                    "vs_ir": round(lat["nncf-ov-ir"] / lat[key], 3),
                    "min_ms": round(fastest[key], 4),
                    "min_vs_ir": round(fastest["nncf-ov-ir"] / fastest[key], 3),
                    "top1": round(top1(path, x, y), 2), **layers(path)})
        out[-1]["same_kernels_as_ir"] = out[-1]["kernels"] == out[1]["kernels"] \
            if len(out) > 1 else None
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet18-w1.0,resnet18-w0.25,vgg11")
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--keep", type=lambda s: [int(k) for k in s.split(",") if k], default=[],
                    help="extra HAD-MC rows with the first K Conv/Gemm nodes kept in FP32")
    ap.add_argument("--onnx", action="append", default=[],
                    help="NAME=FILE.onnx: use this exported model for NAME instead of training")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.onnx = dict(item.split("=", 1) for item in args.onnx)
    from hadmc_core.data import load_dataset

    data = load_dataset("fashion-mnist")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ov-int8-") as tmp:
        for name in args.models.split(","):
            rows += bench(name, data, args, Path(tmp))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2,
                                       default=str))
    print("| model | row | median ms | IR / row | fastest ms | IR / row | top-1 % | "
          "weight layers by precision | reorders | kernels as IR |\n"
          "|---|---|---:|---:|---:|---:|---:|---|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['row']} | {r['latency_ms']:.3f} | {r['vs_ir']:.2f}x | "
              f"{r['min_ms']:.3f} | {r['min_vs_ir']:.2f}x | {r['top1']:.2f} | "
              f"{r['weight_precisions']} | {r['reorders']} | {r['same_kernels_as_ir']} |")


if __name__ == "__main__":
    main()
