"""State shared by the controller (``hadmc_core.pipeline``) and the techniques
(``hadmc_core.techniques``) during one run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hadmc_core.config import PipelineConfig
from hadmc_core.data import DataSplits
from hadmc_core.hal.latency import LatencyModel
from hadmc_core.hal.profile import HardwareProfile
from hadmc_core.progress import ProgressFn
from hadmc_core.report import Candidate, ModelStats, Stages

if TYPE_CHECKING:
    from hadmc_core.backends import Backend
    from hadmc_core.measure import Measurer
    from hadmc_core.models import ArchSpec
    from hadmc_core.tasks import Task


@dataclass
class Context:
    """Everything the stages share for one run. ``model`` is None when the model exists
    only as an ONNX graph (``graph``); the techniques that need PyTorch are then skipped."""

    model: nn.Module | None
    graph: Path | None                   # the source ONNX file of a graph-only model
    spec: ArchSpec | None
    data: DataSplits
    profile: HardwareProfile
    cfg: PipelineConfig
    work: Path
    progress: ProgressFn
    example: torch.Tensor
    lat: LatencyModel
    task: Task
    measurer: Measurer
    origin: dict[str, Any] = field(default_factory=dict)
    #: stages the model source could not offer (``LoadedModel.skipped``)
    source_skipped: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    baseline: ModelStats | None = None
    baseline_path: Path | None = None
    stages: Stages = field(default_factory=Stages)
    warnings: list[str] = field(default_factory=list)
    #: per-technique state that lives across candidates (groups, teacher cache, ...)
    state: dict[str, Any] = field(default_factory=dict)
    #: estimated latency of the unpruned model at the search precision / at FP32
    precision_ratio: float = 1.0
    #: estimated latency with every group at its floor / of the unpruned model
    floor_fraction: float = 0.0
    #: (estimated fraction, measured ms) of pruned structures timed whole at the search
    #: precision, unpruned last; empty when the ladder is placed by the estimate alone
    ladder_curve: list[tuple[float, float]] = field(default_factory=list)
    #: ``time.monotonic()`` when the job started (the time budget counts from it)
    started: float = field(default_factory=time.monotonic)

    @property
    def backend(self) -> Backend:
        return self.measurer.backend

    @property
    def prunable(self) -> bool:
        """Whether pruning was prepared (channel groups found)."""
        return "prune" in self.state

    @property
    def channel_multiple(self) -> int:
        """Channel counts round to this: the config's ``prune.round_to`` or the profile's."""
        return self.cfg.prune.round_to or self.profile.channel_multiple

    @property
    def search_precision(self) -> str:
        """Precision the search plans most layers at: INT8 when quantization is on and the
        profile has it."""
        q = self.cfg.quantize.enabled and self.profile.supports("int8")
        return "int8" if q else "fp32"

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t, 3)


@dataclass
class Work:
    """One candidate in the making: the module the module-phase techniques transform,
    then its FP32 graph."""

    cid: str
    fraction: float
    module: nn.Module | None
    pruned: bool = False
    estimated_ms: float | None = None
    fp32_path: Path | None = None
    sizes: tuple[int, int] = (0, 0)       # params, MACs
    #: PyTorch layer name -> ONNX node name of the FP32 graph (empty for a graph-only model)
    onnx_names: dict[str, str] = field(default_factory=dict)


@dataclass
class Variant:
    """A graph a graph-phase technique built from the current one; the controller
    measures it. ``precisions`` maps weight nodes of the FP32 graph to what the artifact
    stores them in (missing: fp32)."""

    suffix: str
    path: Path
    higher_precision_layers: int
    precisions: dict[str, str]
    #: per-node extras for the report: "sensitivity", "gain_ms" (node -> value)
    info: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the measured candidate of the graph this one was built from (None: the FP32 graph)
    parent: Candidate | None = None
    #: this variant's own measured candidate, once measured
    candidate: Candidate | None = None
