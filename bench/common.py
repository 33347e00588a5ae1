"""What the compression benchmarks share: the machine line, the CLI job, the timing of rows.

``bench/compress.py``, ``bench/byo.py`` and ``bench/detect.py`` build rows, each a model
file and the runtime that runs it, and measure them the same way: batch 1, threads =
cores, one session open at a time, rounds interleaved across rows, the median of all runs
(``hadmc_core.backends``' timing loop, the one the pipeline and the agent use).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hadmc_core.settings import get_settings

CACHE = get_settings().cache_dir / "bench"


def machine() -> dict:
    """The CPU (as the detected profile describes it), cores, Python and profile name."""
    from hadmc_core.hal.detect import detect_profile

    prof = detect_profile()
    return {"cpu": prof.description, "cores": os.cpu_count(),
            "python": platform.python_version(), "profile": prof.name}


def profile_arg(profile: str) -> str:
    """``local-openvino``: this machine's detected profile with OpenVINO as its runtime,
    written to a YAML file (the built-in x86-openvino profile describes an AVX2 machine)."""
    if profile != "local-openvino":
        return profile
    from hadmc_core.hal.detect import detect_profile

    prof = detect_profile()
    prof.name = "local-openvino"
    prof.runtimes = [r for r in prof.runtimes if r.startswith("openvino")]
    if not prof.runtimes:
        raise SystemExit("OpenVINO is not installed here (pip install openvino)")
    path = CACHE / "local-openvino.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prof.to_yaml())
    return str(path)


def hadmc_cli(model: list[str], profile: str, out: Path, drop: float, extra: list[str],
              data: str = "fashion-mnist") -> float:
    """``hadmc compress`` as a user runs it (``model``: its model arguments, e.g.
    ``["--model", "FILE.onnx"]``); returns the job's wall seconds."""
    cmd = [sys.executable, "-m", "hadmc_core.cli", "compress", *model, "--data", data,
           "--profile", profile_arg(profile), "--out", str(out),
           "--max-accuracy-drop", str(drop), "--overwrite", "--quiet", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, text=True, capture_output=True)
    wall = time.perf_counter() - t
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.returncode not in (0, 3):  # 3: constraints not met, best result written
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"hadmc compress failed ({proc.returncode}): {' '.join(cmd)}")
    return wall


def ort_default_int8(fp32: Path, out: Path, calib: Any, batch: int) -> Path:
    """ONNX Runtime static quantization with its default settings on the whole graph (what
    a user tries first on ONNX Runtime), calibrated on ``calib`` in batches of ``batch``."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]) \
        .get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i:i + batch]} for i in range(0, len(calib), batch)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader())
    return out


PTQ_ORT, PTQ_NNCF = "PTQ-INT8, ONNX Runtime defaults", "NNCF PTQ INT8 on OpenVINO"


def ptq_rows(fp32: Path, work: Path, calib: Any, batch: int
             ) -> tuple[dict[str, tuple[Path, str]], dict[str, float], dict[str, str]]:
    """The two post-training INT8 rows of ``fp32`` (``PTQ_ORT``, ``PTQ_NNCF``): their files
    and runtimes, build seconds, and the error of a row that could not be built."""
    from hadmc_core.references import nncf_int8

    rows: dict[str, tuple[Path, str]] = {}
    walls: dict[str, float] = {}
    errors: dict[str, str] = {}
    for name, runtime, build in (
            (PTQ_ORT, "onnxruntime",
             lambda: ort_default_int8(fp32, work / "ptq-ort.onnx", calib, batch)),
            (PTQ_NNCF, "openvino", lambda: nncf_int8(fp32, work / "nncf.xml", calib))):
        t = time.perf_counter()
        try:
            rows[name] = (build(), runtime)
        except Exception as e:  # noqa: BLE001 - a row that cannot be built is reported
            errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        walls[name] = time.perf_counter() - t
    return rows, walls, errors


def time_rows(rows: dict[str, tuple[Path, str]], shape: tuple[int, ...], rounds: int,
              runs: int) -> dict[str, float]:
    """Median latency per row; one session open at a time, rounds interleaved."""
    from hadmc_core import backends

    samples: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(rounds):
        for key, (path, runtime) in rows.items():
            t = backends.get(runtime).time_model(path, shape, runs=runs, warmup=10)
            samples[key].extend(t.samples or [t.median_ms])
    return {k: statistics.median(v) for k, v in samples.items()}


def top1(path: Path, runtime: str, split: Any) -> float:
    """Top-1 %, from the outputs of ``runtime`` running ``path`` on ``split``."""
    from hadmc_core import backends

    logits = backends.get(runtime).predict(path, split.x)[0]
    return 100.0 * float((logits.argmax(1) == split.y).mean())


def size_of(path: Path) -> int:
    """Bytes of a model file (an OpenVINO IR counts its .bin too)."""
    extra = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (extra.stat().st_size if extra and extra.exists() else 0)


def chosen(rep: dict) -> dict:
    """The chosen candidate: its id, rung (1.0: the unpruned model) and FP32-kept layers."""
    c = next(c for c in rep["candidates"] if c["chosen"])
    return {"id": c["id"], "latency_fraction": c["latency_fraction"],
            "higher_precision_layers": c["higher_precision_layers"]}


def printer(name: str):
    """A progress function that prints a stage's first, last and every 30 s update."""
    last = {"stage": None, "t": 0.0}

    def fn(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage != last["stage"] or now - last["t"] > 30 or done == total:
            print(f"[{name}] {stage} {done}/{total}", flush=True)
            last.update(stage=stage, t=now)
    return fn
