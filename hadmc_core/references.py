"""What a user would run instead of the compressed model, measured in the same job.

A speedup over ONNX Runtime FP32 flatters a compressor: on an x86 CPU OpenVINO runs the
same FP32 graph about twice as fast, and NNCF's post-training INT8 on OpenVINO takes a few
seconds of work. So when the target is this machine (the report's latency is
``measured``), a job also measures, on the same inputs and in the same process:

- ``onnxruntime-fp32`` and ``openvino-fp32``: the baseline graph as it is, on each CPU
  runtime installed here (the best FP32 runtime for an x86 target is usually OpenVINO);
- ``openvino-nncf-int8``: ``nncf.quantize`` with its defaults on the OpenVINO model of the
  baseline (300 calibration images from the training split; NNCF's own default subset
  size), run by OpenVINO: what a user tries first.

Latency: batch 1, the job's thread count; the chosen model and the references are timed in
``ROUNDS`` interleaved rounds, one session open at a time, each round ``measure.runs``
calls; the median of all calls. The chosen model's speedup over each reference comes from
this same-run timing, so it does not mix timings taken minutes apart. Accuracy: the task's
metric on the test split from the runtime's own outputs, beside the chosen model's.

Where the target is not this machine the section says so and measures nothing: a CPU's
timing is never presented as another device's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hadmc_core import backends

if TYPE_CHECKING:
    from hadmc_core.context import Context
    from hadmc_core.report import Candidate

log = logging.getLogger(__name__)
#: interleaved timing rounds over the chosen model and the references
ROUNDS = 3
#: calibration images for the NNCF reference (``nncf.quantize``'s default subset size)
NNCF_SUBSET = 300
#: how a reference row is named in words (the report's rows carry it as ``label``)
REFERENCE_NAMES = {"onnxruntime-fp32": "ONNX Runtime FP32", "openvino-fp32": "OpenVINO FP32",
                   "openvino-nncf-int8": "NNCF PTQ INT8 on OpenVINO"}


def measure(ctx: Context, chosen: Candidate, accuracy: float) -> dict[str, Any]:
    """The report's ``references`` section (module doc). ``accuracy``: the chosen model's
    test metric, as the report states it."""
    if not ctx.cfg.measure.references:
        return {"skipped": "switched off in the config (measure.references)"}
    if ctx.measurer.source != "measured":
        return {"skipped": f"the target ({ctx.profile.name}) is not this machine: "
                           "references are measured only where the model runs"}
    assert ctx.baseline_path is not None and chosen.path is not None
    rows: list[dict[str, Any]] = []
    models: dict[str, tuple[Any, Path]] = {"chosen": (ctx.backend, chosen.path)}
    for name in ("onnxruntime", "openvino"):
        if name in backends.names() and backends.get(name).available():
            rows.append({"name": f"{name}-fp32", "label": REFERENCE_NAMES[f"{name}-fp32"],
                         "runtime": name, "precision": "fp32",
                         "work": "none: the baseline graph as it is"})
            models[rows[-1]["name"]] = (backends.get(name), ctx.baseline_path)
    if find_spec("nncf") is not None and "openvino" in backends.names() \
            and backends.get("openvino").available():
        row: dict[str, Any] = {"name": "openvino-nncf-int8",
                               "label": REFERENCE_NAMES["openvino-nncf-int8"],
                               "runtime": "openvino", "precision": "int8"}
        try:
            t0 = time.perf_counter()
            path = nncf_int8(ctx.baseline_path, ctx.work / "reference-nncf-int8.xml",
                             ctx.data.train.x[:NNCF_SUBSET])
            n = min(NNCF_SUBSET, len(ctx.data.train))
            row["work"] = (f"nncf.quantize with its defaults, {n} calibration images, "
                           f"{time.perf_counter() - t0:.1f} s")
            models[row["name"]] = (backends.get("openvino"), path)
        except Exception as e:  # a reference that cannot be built is reported, not fatal
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            log.warning("NNCF reference not built: %s", row["error"])
        rows.append(row)
    if not rows:
        return {"skipped": "no reference runtime is installed here"}

    ms = time_interleaved(ctx, models)
    test = ctx.data.test
    for row in rows:
        if row["name"] not in models:
            continue
        backend, path = models[row["name"]]
        row["latency_ms"] = round(ms[row["name"]], 4)
        row["accuracy"] = round(ctx.task.metric(
            ctx.task.predict(backend, path, test.x, ctx.measurer.cfg.threads), test), 3)
        row["accuracy_minus_chosen"] = round(row["accuracy"] - accuracy, 3)
        row["chosen_speedup"] = round(row["latency_ms"] / ms["chosen"], 3)
    timed = [r for r in rows if "latency_ms" in r]
    fastest = min(timed, key=lambda r: r["latency_ms"]) if timed else None
    return {
        "where": "this machine, in the job",
        "method": f"batch 1, {ROUNDS} interleaved rounds of measure.runs calls, one session "
                  "open at a time, median; accuracy on the test split from each runtime",
        "chosen": {"runtime": ctx.backend.name, "latency_ms": round(ms["chosen"], 4),
                   "accuracy": round(accuracy, 3)},
        "rows": rows,
        "fastest": fastest["name"] if fastest else None,
        "speedup_vs_fastest": fastest["chosen_speedup"] if fastest else None,
    }


def time_interleaved(ctx: Context, models: dict[str, tuple[Any, Path]]) -> dict[str, float]:
    """Median batch-1 ms of each model over ``ROUNDS`` interleaved rounds (module doc)."""
    m = ctx.measurer.cfg
    shape = (1, *ctx.measurer.input_shape)
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(ROUNDS):
        for key, (backend, path) in models.items():
            samples[key] += backend.time_model(path, shape, m.runs, m.warmup, m.threads).samples
    return {k: statistics.median(v) for k, v in samples.items()}


def nncf_int8(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    """NNCF post-training INT8 of the OpenVINO model of ``fp32`` with NNCF's defaults,
    saved as OpenVINO IR (``out`` .xml, weights beside it)."""
    import nncf
    import openvino as ov

    from hadmc_core.backends.openvino import quiet_nncf

    model = ov.Core().read_model(str(fp32))
    items = [np.ascontiguousarray(calib[i:i + 1]) for i in range(len(calib))]
    with quiet_nncf(), contextlib.redirect_stdout(io.StringIO()):  # progress bars
        q = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    ov.save_model(q, str(out))
    return out


def lines(refs: dict[str, Any]) -> list[str]:
    """One line per reference the job measured: the chosen model's speedup over it and
    the chosen model's accuracy minus the reference's, in points."""
    if "skipped" in refs:
        return [f"references : not measured ({refs['skipped']})"]
    out = []
    for row in refs.get("rows", []):
        label = row.get("label") or REFERENCE_NAMES.get(row["name"], row["name"])
        if "error" in row:
            out.append(f"vs {label}: not measured ({row['error']})")
        else:
            x = row["chosen_speedup"]
            pace = f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"
            out.append(f"vs {label}: {pace} ({row['latency_ms']:.3f} ms), accuracy "
                       f"{-row['accuracy_minus_chosen']:+.2f} pts")
    return out
