"""Measuring candidates: which backend builds and runs them, where their latency comes
from, and their statistics.

Latency source, as the report states it:
- ``device_table``: a device's own per-layer table was given; the latency is the latency
  model's estimate from that table, through the device's whole-model term when the table
  carries one (``hadmc_core.hal.wholeterm``; the report's ``latency_model`` is then
  ``device-table+whole-model-term``), else the sum of the layers; times the device's
  correction from the p50s it reported when one came with the table
  (``hadmc_core.hal.feedback``; ``latency_model`` ends in ``+p50-correction``). Each
  targeted device's own table, when given, also estimates every candidate uncorrected
  (``ModelStats.device_table_ms``), so the p50 a device reports for the version can be
  paired with its own table's prediction.
- ``measured``: the profile describes this machine (``runs_here``) and no table was given;
  the latency is the backend's median wall-clock at batch 1.
- ``estimated``: otherwise; the latency is the latency model's estimate for the profile
  (roofline). The worker's own timing is kept apart as ``measured_on_worker_ms`` and never
  reported as the device's.

Accuracy decisions are paired: the measurer keeps the task's per-image results of the
baseline on the validation split (``Task.per_image``), and every candidate's validation
measurement carries ``Task.drop_bound`` against them (``hadmc_core.decision``), so no
comparison runs the baseline again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hadmc_core import graph_stats
from hadmc_core.config import MeasureConfig
from hadmc_core.decision import DEFAULT_CONFIDENCE, DropBound
from hadmc_core.errors import ConfigError
from hadmc_core.hal.latency import LatencyModel, runs_here
from hadmc_core.report import ModelStats

if TYPE_CHECKING:
    from hadmc_core.backends import Backend
    from hadmc_core.data import Split
    from hadmc_core.hal.profile import HardwareProfile
    from hadmc_core.tasks import Task

log = logging.getLogger(__name__)


def latency_source(profile: HardwareProfile, device_table: dict | None,
                   profile_backend: bool = True) -> str:
    """``profile_backend``: the backend is one of the profile's runtimes (a timing with a
    stand-in runtime is not the device's, so it is estimated instead)."""
    if device_table:
        return "device_table"
    return "measured" if runs_here(profile) and profile_backend else "estimated"


def backend_for(profile: HardwareProfile) -> tuple[Backend, str | None]:
    """The backend that builds and checks the profile's artifact, and a note when it is not
    one of the profile's runtimes (then ONNX Runtime builds an ONNX QDQ file and its
    accuracy is checked here; the latency is estimated)."""
    from hadmc_core.backends import for_profile, get

    try:
        return for_profile(profile), None
    except ConfigError as e:
        note = (f"none of the profile's runtimes ({', '.join(profile.runtimes)}) runs here "
                f"({e}); the artifact is built and checked with ONNX Runtime")
        return get("onnxruntime"), note


@dataclass
class Measurer:
    """Accuracy and latency of candidate graphs for one run."""

    backend: Backend
    task: Task
    lat: LatencyModel
    cfg: MeasureConfig
    input_shape: tuple[int, ...]          # (C, H, W)
    source: str                           # measured | device_table | estimated
    confidence: float = DEFAULT_CONFIDENCE   # of the paired drop bounds
    #: the task's per-image results of the baseline on the validation split
    baseline_val: Any = None
    #: each targeted device's own table (uncorrected), by device name
    device_lats: dict[str, LatencyModel] = field(default_factory=dict)
    _graphs: dict[Path, dict[str, graph_stats.GraphLayer]] = field(default_factory=dict)

    def predict(self, path: Path, x: np.ndarray) -> list[np.ndarray]:
        return self.task.predict(self.backend, path, x, self.cfg.threads)

    def metric(self, path: Path, split: Split) -> float:
        return self.task.metric(self.predict(path, split.x), split)

    def evaluate(self, path: Path, split: Split) -> tuple[float, Any]:
        """The metric and the task's per-image results, from one run of the model."""
        outputs = self.predict(path, split.x)
        return self.task.metric(outputs, split), self.task.per_image(outputs, split)

    def val_drop(self, path: Path, val: Split) -> tuple[float, DropBound]:
        """Validation metric of a candidate and its paired drop from the baseline."""
        metric, per_image = self.evaluate(path, val)
        return metric, self.drop_bound(per_image, val)

    def drop_bound(self, per_image: Any, val: Split) -> DropBound:
        if self.baseline_val is None:
            raise RuntimeError("the baseline's validation results are not kept yet: measure "
                               "it with stats(..., baseline=True) first")
        return self.task.drop_bound(self.baseline_val, per_image, val, self.confidence)

    def _graph(self, fp32_path: Path) -> dict[str, graph_stats.GraphLayer]:
        if fp32_path not in self._graphs:
            self._graphs[fp32_path] = graph_stats.layers(fp32_path)
        return self._graphs[fp32_path]

    def estimate_ms(self, fp32_path: Path, precisions: dict[str, str],
                    corrected: bool = True) -> float:
        """The latency model's estimate of the whole graph built from ``fp32_path`` with
        each weight node at its precision: its layers through the model's whole-model term
        where it has one (a device's, sent with its table; or fitted in graph context),
        else their sum, times the device's correction where it has one
        (``graph_stats.model_ms``)."""
        return graph_stats.model_ms(self.lat, self._graph(fp32_path), precisions, corrected)

    def device_estimates(self, fp32_path: Path, precisions: dict[str, str]
                         ) -> dict[str, float] | None:
        """Each targeted device's own table's estimate of the graph, uncorrected."""
        if not self.device_lats:
            return None
        graph = self._graph(fp32_path)
        return {name: round(graph_stats.model_ms(lat, graph, precisions), 6)
                for name, lat in self.device_lats.items()}

    def stats(self, path: Path, sizes: tuple[int, int], *, fp32_path: Path,
              precisions: dict[str, str], test: bool, val: Split, test_split: Split,
              baseline: bool = False) -> ModelStats:
        """``baseline``: keep this model's per-image validation results as the baseline
        every later measurement is paired with; otherwise the stats carry the drop bound."""
        m = self.cfg
        timing = self.backend.time_model(path, (1, *self.input_shape), m.runs, m.warmup,
                                         m.threads)
        latency, p90, worker = timing.median_ms, timing.p90_ms, None
        table: dict[str, Any] = {}
        if self.source != "measured":
            latency = p90 = self.estimate_ms(fp32_path, precisions)
            worker = timing.median_ms
            table["device_table_ms"] = self.device_estimates(fp32_path, precisions)
            if self.lat.correction is not None:
                table["uncorrected_ms"] = self.estimate_ms(fp32_path, precisions, False)
            if table["device_table_ms"] or self.lat.correction is not None:
                table["table_precision"] = graph_stats.main_precision(
                    self.lat, self._graph(fp32_path), precisions)
        val_metric, per_image = self.evaluate(path, val)
        if baseline:
            self.baseline_val = per_image
        return ModelStats(
            accuracy=self.metric(path, test_split) if test else float("nan"),
            val_accuracy=val_metric,
            latency_ms=latency, latency_p90_ms=p90, size_bytes=Path(path).stat().st_size,
            params=sizes[0], macs=sizes[1], measured_on_worker_ms=worker,
            val_drop=None if baseline else self.drop_bound(per_image, val), **table)
