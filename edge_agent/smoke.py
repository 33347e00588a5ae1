"""Smoke test of a staged version: load it in ONNX Runtime, run the probe inputs shipped with
the version, compare with the expected outputs within tolerance, time p50 / p95 / p99."""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import SmokeTestError


@dataclass
class Probe:
    inputs: np.ndarray
    outputs: np.ndarray
    atol: float
    rtol: float


@dataclass
class SmokeResult:
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_abs_err: float | None


def open_session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session (import here: tests of other modules stay light)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def load_probe(data: bytes) -> Probe:
    """Parse a probe ``.npz`` (never unpickled): inputs, outputs, atol, rtol."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("inputs", "outputs", "atol", "rtol")}
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise SmokeTestError(f"probe is not a valid .npz with inputs, outputs, atol, rtol "
                             f"({type(e).__name__}: {e})") from e
    inputs, outputs = arrays["inputs"], arrays["outputs"]
    if inputs.ndim < 1 or outputs.ndim < 1 or len(inputs) != len(outputs) or not len(inputs):
        raise SmokeTestError(f"probe inputs {inputs.shape} and outputs {outputs.shape} do not "
                             "pair up (batch first, same batch size)")
    try:
        atol, rtol = float(arrays["atol"]), float(arrays["rtol"])
    except (TypeError, ValueError) as e:
        raise SmokeTestError("probe atol / rtol must be float scalars") from e
    return Probe(inputs.astype(np.float32, copy=False), outputs, atol, rtol)


def _first_input(sess: Any) -> str:
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise SmokeTestError(f"the model has {len(inputs)} inputs; the agent serves and "
                             "smoke-tests single-input models only")
    return str(inputs[0].name)


def compare(sess: Any, probe: Probe) -> float:
    """Max absolute error of the model's first output against the probe's."""
    name = _first_input(sess)
    try:
        got = np.asarray(sess.run(None, {name: probe.inputs})[0])
    except Exception as e:  # noqa: BLE001 - ORT raises its own types
        raise SmokeTestError(f"the model does not run on the probe inputs "
                             f"{probe.inputs.shape}: {str(e)[:200]}") from e
    want = probe.outputs
    if got.shape != want.shape:
        raise SmokeTestError(f"output shape {got.shape} differs from the probe's {want.shape}")
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0))
    if not np.allclose(got, want, atol=probe.atol, rtol=probe.rtol):
        raise SmokeTestError(f"outputs differ from the probe's expected outputs (max abs error "
                             f"{err:.3g}, atol {probe.atol:g}, rtol {probe.rtol:g})")
    return err


def time_runs(sess: Any, x: np.ndarray, runs: int) -> list[float]:
    name = _first_input(sess)
    for _ in range(3):
        sess.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1e3)
    return times


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times), q))


def _batch_one(sess: Any, probe: Probe | None) -> np.ndarray:
    if probe is not None:
        return probe.inputs[:1]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in sess.get_inputs()[0].shape]
    return np.zeros(shape, np.float32)


def smoke_test(model: Path, probe: Probe | None, runs: int = 30,
               threads: int = 0) -> SmokeResult:
    """Raise SmokeTestError unless the model loads and matches the probe; time batch 1.
    Without a probe (a version published before probes existed) only load and run."""
    try:
        sess = open_session(model, threads)
    except Exception as e:  # noqa: BLE001
        raise SmokeTestError(f"ONNX Runtime cannot load the model: {str(e)[:200]}") from e
    err = compare(sess, probe) if probe is not None else None
    try:
        times = time_runs(sess, _batch_one(sess, probe), runs)
    except SmokeTestError:
        raise
    except Exception as e:  # noqa: BLE001
        raise SmokeTestError(f"the model fails at batch 1: {str(e)[:200]}") from e
    return SmokeResult(round(statistics.median(times), 4), round(percentile(times, 95), 4),
                       round(percentile(times, 99), 4), err)
