"""The backend interface and the one timing loop (torch-free: numpy and the standard library).

A backend is a runtime that opens a model file, runs it, times it, profiles it per node
and writes its INT8 form. ``Backend`` holds what is the same for every runtime (timing a
model at batch 1, predicting in batches); a runtime module implements ``open``,
``quantize_int8`` and, where the runtime has a per-layer profiler, ``profile_nodes``.
"""

from __future__ import annotations

import os
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

#: The dims of an input: an int where fixed, None where the model leaves it open.
Shape = tuple[int | None, ...]


@dataclass
class Timing:
    """Wall-clock milliseconds of ``runs`` timed calls (after the warm-up calls)."""

    median_ms: float
    p90_ms: float
    p95_ms: float
    runs: int
    threads: int
    samples: list[float] = field(default_factory=list, repr=False)

    def percentile(self, q: float) -> float:
        """Any other percentile of the samples (linear interpolation, as numpy's)."""
        return float(np.percentile(np.asarray(self.samples), q))


def time_runs(run: Callable[[], object], runs: int, warmup: int, min_seconds: float = 0.0,
              threads: int = 0, max_runs: int = 1000) -> Timing:
    """Call ``run`` ``warmup`` times untimed, then time at least ``runs`` calls, going on
    until ``min_seconds`` have passed (at most ``max_runs`` calls in all, never fewer than
    ``runs``). ``threads`` is recorded in the result, not applied.

    This is the project's one timing loop: whole models on every backend, single layers
    for the latency model, the agent's smoke test.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1 (got {runs})")
    for _ in range(max(0, warmup)):
        run()
    samples: list[float] = []
    start = time.perf_counter()
    limit = max(runs, max_runs)
    while len(samples) < runs or (time.perf_counter() - start < min_seconds
                                  and len(samples) < limit):
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) * 1e3)
    arr = np.asarray(samples)
    return Timing(median_ms=statistics.median(samples), p90_ms=float(np.percentile(arr, 90)),
                  p95_ms=float(np.percentile(arr, 95)), runs=len(samples), threads=threads,
                  samples=samples)


def default_threads(threads: int | None = None) -> int:
    """``threads`` when given, else the CPUs this process may run on."""
    if threads:
        return threads
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Session(ABC):
    """An opened model: its inputs and outputs, and a call that runs it."""

    input_names: list[str]
    input_shapes: list[Shape]
    input_dtypes: list[np.dtype]
    output_names: list[str]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """All outputs, in ``output_names`` order."""

    def example_feeds(self, first_shape: Sequence[int] | None = None, seed: int = 0
                      ) -> dict[str, np.ndarray]:
        """Random inputs at batch 1: the first input in ``first_shape`` when given, every
        open dim 1 otherwise."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for i, (name, shape, dtype) in enumerate(
                zip(self.input_names, self.input_shapes, self.input_dtypes, strict=True)):
            dims = list(first_shape) if i == 0 and first_shape is not None else \
                [d if isinstance(d, int) and d > 0 else 1 for d in shape]
            if np.issubdtype(dtype, np.floating):
                feeds[name] = rng.standard_normal(dims).astype(dtype)
            else:
                feeds[name] = np.zeros(dims, dtype)
        return feeds


class Backend(ABC):
    """A runtime that runs, times, profiles and quantizes ONNX models.

    ``name`` is the runtime's name as profiles and agents write it (``onnxruntime``,
    ``openvino``); a profile runtime ``<name>`` or ``<name>-<anything>`` selects it.
    ``artifact_format`` says what ``quantize_int8`` writes, i.e. what the device receives.
    """

    name: ClassVar[str]
    artifact_format: ClassVar[str]

    @abstractmethod
    def available(self) -> bool:
        """Whether the runtime is installed here (checked without importing it)."""

    def version(self) -> str | None:
        """The runtime's version, None when it is not installed."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.name)
        except PackageNotFoundError:
            return None

    @abstractmethod
    def open(self, path: Path | bytes, threads: int | None = None, *,
             batch: int | None = None) -> Session:
        """Open an ONNX model (a file or its bytes) with ``threads`` intra-op threads (all
        CPUs when None). ``batch`` fixes an open batch dim where the runtime compiles for
        static shapes (a batch-1 latency is then that of the device's batch-1 model)."""

    def time_model(self, path: Path | bytes, input_shape: tuple[int, ...], runs: int = 50,
                   warmup: int = 10, threads: int | None = None) -> Timing:
        """Wall-clock latency at batch 1. ``input_shape`` is that of the first input with or
        without its batch dim (the batch dim is set to 1 either way)."""
        threads = default_threads(threads)
        sess = self.open(path, threads, batch=1)
        rank = len(sess.input_shapes[0]) if sess.input_shapes else len(input_shape)
        shape = tuple(input_shape)
        shape = (1, *shape[1:]) if len(shape) == rank else (1, *shape)
        feeds = sess.example_feeds(shape)
        return time_runs(lambda: sess.run(feeds), runs, warmup, threads=threads)

    def predict(self, path: Path | bytes, x: np.ndarray, batch_size: int = 256,
                threads: int | None = None) -> list[np.ndarray]:
        """Every output for the first input ``x``, run in batches and concatenated."""
        sess = self.open(path, threads)
        name = sess.input_names[0]
        parts = [sess.run({name: np.ascontiguousarray(x[i:i + batch_size])})
                 for i in range(0, len(x), batch_size)]
        if not parts:
            raise ValueError("predict needs at least one sample")
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]

    def profile_nodes(self, path: Path, threads: int, runs: int = 150, warmup: int = 20
                      ) -> dict[str, float]:
        """Median kernel ms of every Conv/Gemm/MatMul node (ONNX node names) as the runtime
        runs the model at batch 1; NotImplementedError where the runtime has no profiler."""
        raise NotImplementedError(f"{self.name} has no per-node profiler")

    @abstractmethod
    def quantize_int8(self, fp32_path: Path, out_path: Path, calib_x: np.ndarray, *,
                      keep_fp32: Sequence[str] = (), per_channel: bool = True,
                      reduce_range: bool = False) -> Path:
        """Write the INT8 artifact of ``fp32_path`` to ``out_path``, calibrated on
        ``calib_x`` (samples of the first input, batch first). ``keep_fp32`` are ONNX node
        names left in floating point. Cloud side only (needs onnx and the quantizer)."""

    def executes_as(self, precision: str) -> str:
        """What a layer planned at ``precision`` really executes as on this runtime."""
        return "int8" if precision == "int8" else "fp32"
