"""Smoke test of a staged version: load it in the runtime it was built for, run the probe
inputs shipped with the version, compare with the expected outputs within tolerance, time
p50 / p95 / p99 with the project's one timing loop (``hadmc_core.backends.time_runs``).

Which runtime runs a version: the desired state names the runtimes a version may run on,
the one it was built and checked with first (``runtimes``); the agent takes the first of
them installed here (``choose_runtime``) and records its backend's name in the version's
directory (``RUNTIME_FILE``), so the smoke test, the health checks and the inference
endpoint open the version with the same runtime (``open_session``). A version without a
record (a server that names no runtime) runs on the first runtime installed here
(ONNX Runtime, else OpenVINO).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent import detect
from edge_agent.errors import SmokeTestError
from hadmc_core import backends
from hadmc_core.backends import Backend, Session
from hadmc_core.errors import HadmcError

#: In a version's directory: the name of the backend that runs it (``openvino``).
RUNTIME_FILE = "runtime"


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


def installed() -> list[str]:
    """The backends installed here, in registration order."""
    return [n for n in backends.names() if backends.get(n).available()]


def choose_runtime(runtimes: list[str] | None) -> Backend:
    """The first of ``runtimes`` (``openvino-cpu``, ``onnxruntime-cpu-1.23``, ...) installed
    here; the first runtime installed here when none is named. SmokeTestError when the
    version names runtimes and none of them is installed."""
    try:
        if not runtimes:
            return backends.default()
        for runtime in runtimes:
            name = backends.backend_name(str(runtime))
            if name in backends.names() and backends.get(name).available():
                return backends.get(name)
    except HadmcError as e:
        raise SmokeTestError(str(e)) from e
    raise SmokeTestError(f"the version was built for {' or '.join(map(str, runtimes))}; "
                         f"this device has {', '.join(installed()) or 'no runtime'} (install "
                         "the runtime, or roll out a version built for this one)")


def runtime_of(version_dir: Path) -> Backend:
    """The backend recorded for a held (or staged) version; the default one without a
    record."""
    try:
        name = (version_dir / RUNTIME_FILE).read_text().strip()
    except FileNotFoundError:
        name = ""
    return choose_runtime([name] if name else None)


def open_session(path: Path, threads: int = 0, backend: str | Backend | None = None
                 ) -> Session:
    """The model file opened by ``backend`` (by default the runtime recorded beside it) with
    ``threads`` threads (all CPUs when 0): the one way the agent opens a model."""
    runtime = runtime_of(path.parent) if backend is None else backends.resolve(backend)
    try:
        return runtime.open(path, threads or None)
    except Exception as e:  # noqa: BLE001 - runtimes raise their own types
        raise SmokeTestError(f"{runtime.name} cannot load the model: {str(e)[:200]}") from e


def load_probe(data: bytes) -> Probe:
    """Parse a probe ``.npz`` (never unpickled): inputs, outputs, atol, rtol."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("inputs", "outputs", "atol", "rtol")}
    except (KeyError, ValueError, OSError, EOFError) as e:
        raise SmokeTestError(f"probe is not a valid .npz with inputs, outputs, atol, rtol "
                             f"({type(e).__name__}: {e})") from e
    inputs, outputs = arrays["inputs"], arrays["outputs"]
    if inputs.ndim < 1 or outputs.ndim < 1 or not len(inputs):
        raise SmokeTestError(f"probe inputs {inputs.shape} and outputs {outputs.shape} do not "
                             "pair up (batch first)")
    try:
        atol, rtol = float(arrays["atol"]), float(arrays["rtol"])
    except (TypeError, ValueError) as e:
        raise SmokeTestError("probe atol / rtol must be float scalars") from e
    return Probe(inputs.astype(np.float32, copy=False), outputs, atol, rtol)


def _first_input(sess: Session) -> str:
    if len(sess.input_names) != 1:
        raise SmokeTestError(f"the model has {len(sess.input_names)} inputs; the agent serves "
                             "and smoke-tests single-input models only")
    return sess.input_names[0]


def compare(sess: Session, probe: Probe) -> float:
    """Max absolute error of the model's first output against the probe's."""
    name = _first_input(sess)
    if len(probe.inputs) != len(probe.outputs):
        raise SmokeTestError(f"probe inputs {probe.inputs.shape} and outputs "
                             f"{probe.outputs.shape} do not pair up (batch first, same size)")
    try:
        got = np.asarray(sess.run({name: probe.inputs})[0])
    except Exception as e:  # noqa: BLE001 - runtimes raise their own types
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


def _batch_one(sess: Session, probe: Probe | None) -> np.ndarray:
    if probe is not None:
        return probe.inputs[:1]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in sess.input_shapes[0]]
    return np.zeros(shape, sess.input_dtypes[0])


def smoke_test(model: Path, probe: Probe | None, runs: int = 30, threads: int = 0,
               backend: str | Backend | None = None) -> SmokeResult:
    """Raise SmokeTestError unless the model loads and matches the probe; time batch 1.
    Without a probe (a version published before probes existed) only load and run.
    ``backend``: a name or a backend; the runtime recorded beside ``model`` when None."""
    sess = open_session(model, threads, backend)
    info = detect.model_info(model)  # a detector's probe is matched box by box
    err = None if probe is None else detect.compare_probe(sess, probe, info) \
        if info.is_detector else compare(sess, probe)
    feeds = {_first_input(sess): _batch_one(sess, probe)}
    try:
        timing = backends.time_runs(lambda: sess.run(feeds), runs, 3)
    except Exception as e:  # noqa: BLE001
        raise SmokeTestError(f"the model fails at batch 1: {str(e)[:200]}") from e
    return SmokeResult(round(timing.median_ms, 4), round(timing.p95_ms, 4),
                       round(timing.percentile(99), 4), err)
