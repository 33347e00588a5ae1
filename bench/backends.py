"""FP32 and INT8 latency and accuracy of ResNet-18 on each backend (ONNX Runtime, OpenVINO):

    python bench/backends.py [--weights W.safetensors] [--data fashion-mnist] [--rounds 5]
                             [--runs 100] [--threads 0] [--eval 2000] [--out FILE.json]

ResNet-18 (small stem; 1x28x28 for Fashion-MNIST) with its BatchNorms folded, exported by
``hadmc_core.onnx_io.export_onnx``; INT8 by each backend's ``quantize_int8`` (ONNX Runtime's
static QDQ quantizer; NNCF for OpenVINO) on 256 training images, ``reduce_range`` as the
pipeline chooses it for this CPU. Latency: batch 1, ``backend.time_model`` (the one timing
loop), one session open at a time, each (artifact, backend) timed once per round in turn;
the figure is the median of the round medians, with the lowest and highest round median.
Accuracy: top-1 on the first ``--eval`` test images. Also: ONNX Runtime's INT8 file run by
OpenVINO (the format is shared), and OpenVINO FP32 without the f32 precision pin (the
CPU plugin's default inference precision: bf16 on CPUs with AMX or AVX-512 BF16).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hadmc_core import backends
from hadmc_core.backends import default_threads, time_runs
from hadmc_core.backends.openvino import OvSession
from hadmc_core.data import load_dataset
from hadmc_core.fuse import fold_batchnorm
from hadmc_core.hal.detect import cpu_flags, cpu_model
from hadmc_core.models import ArchSpec, build_model, load_weights, read_weights
from hadmc_core.onnx_io import export_onnx
from hadmc_core.quantize import INT8_DOT_FLAGS


def _ov_default_precision(path: Path, shape: tuple[int, ...], threads: int,
                          verbose: bool) -> OvSession:
    """OpenVINO FP32 with the CPU plugin's own inference precision (no f32 pin)."""
    import openvino.properties as props
    import openvino.properties.hint as hints

    ov = backends.get("openvino")
    m = ov.core().read_model(str(path))
    m.reshape({m.inputs[0]: list(shape)})
    compiled = ov.core().compile_model(m, "CPU", {
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        props.inference_num_threads: threads})
    if verbose:
        print("OpenVINO default inference precision here:",
              compiled.get_property(hints.inference_precision))
    return OvSession(compiled)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--eval", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    threads = default_threads(args.threads or None)
    tmp = Path(tempfile.mkdtemp(prefix="hadmc-backends-"))
    data = load_dataset(args.data)
    model = build_model(ArchSpec("resnet18", 1, 10, "small")).eval()
    if args.weights:
        load_weights(model, read_weights(args.weights)[0])
    x = torch.from_numpy(data.val.x[:2])
    fp32 = export_onnx(fold_batchnorm(model, x).model, x, tmp / "fp32.onnx")
    reduce_range = not (INT8_DOT_FLAGS & cpu_flags())
    calib = data.train.x[:256]
    files: dict[str, Path] = {"fp32": fp32}
    quant_s: dict[str, float] = {}
    names = [n for n in backends.names() if backends.get(n).available()]
    for name in names:
        t = time.perf_counter()
        files[f"int8-{name}"] = backends.get(name).quantize_int8(
            fp32, tmp / f"int8-{name}.onnx", calib, reduce_range=reduce_range)
        quant_s[name] = round(time.perf_counter() - t, 1)
    cases = [("fp32", n) for n in names] + [(f"int8-{n}", n) for n in names]
    if "openvino" in names:
        cases.append(("int8-onnxruntime", "openvino"))
    test = data.test
    n_eval = min(args.eval, len(test))
    rows: dict[str, dict] = {}
    for artifact, name in cases:
        out = backends.get(name).predict(files[artifact], test.x[:n_eval], threads=threads)[0]
        rows[f"{artifact} @ {name}"] = {
            "artifact": artifact, "backend": name, "size_bytes": files[artifact].stat().st_size,
            "top1": round(100.0 * float((out.argmax(1) == test.y[:n_eval]).mean()), 2),
            "round_medians_ms": []}
    if "openvino" in names:
        rows["fp32 @ openvino, default precision"] = {
            "artifact": "fp32", "backend": "openvino (no f32 pin)",
            "size_bytes": fp32.stat().st_size, "top1": None, "round_medians_ms": []}
    xi = test.x[:1]
    shape = tuple(xi.shape)
    for r in range(args.rounds):
        for row in rows.values():
            if row["backend"] == "openvino (no f32 pin)":
                sess = _ov_default_precision(fp32, shape, threads, verbose=r == 0)
                feeds = {sess.input_names[0]: xi}
                t = time_runs(lambda s=sess, f=feeds: s.run(f), args.runs, 20, threads=threads)
            else:
                t = backends.get(row["backend"]).time_model(
                    files[row["artifact"]], shape, args.runs, 20, threads)
            row["round_medians_ms"].append(round(t.median_ms, 4))
            del t
        print(f"round {r + 1}/{args.rounds} done")
    for row in rows.values():
        m = row["round_medians_ms"]
        row.update(median_ms=round(statistics.median(m), 3), min_ms=min(m), max_ms=max(m))
    result = {
        "machine": {"cpu": cpu_model(), "machine": platform.machine(), "threads": threads,
                    "int8_dot": sorted(INT8_DOT_FLAGS & cpu_flags()),
                    "versions": {n: backends.get(n).version() for n in names}},
        "weights": str(args.weights) if args.weights else "random",
        "eval_images": n_eval, "reduce_range": reduce_range, "quantize_seconds": quant_s,
        "runs_per_round": args.runs, "rounds": args.rounds, "results": rows}
    print(f"{'case':42} {'top1':>6} {'MB':>6} {'median ms':>10} {'min':>8} {'max':>8}")
    for key, row in rows.items():
        top1 = "-" if row["top1"] is None else f"{row['top1']:.2f}"
        print(f"{key:42} {top1:>6} {row['size_bytes'] / 1e6:6.1f} {row['median_ms']:10.3f} "
              f"{row['min_ms']:8.3f} {row['max_ms']:8.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
