"""What a task is: how a model's outputs are scored and trained, and where its graph
ends (the head) and where a student can be aligned with its teacher.

A task is one module with a class that satisfies ``Task`` and a ``register`` call in
``hadmc_core.tasks``. ``GraphTask`` gives the structural parts (head, feature points) found
from the model's traced graph, so a new task usually writes only its loss, metric, output
check and data reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from hadmc_core.tasks import graph

if TYPE_CHECKING:
    from torch import nn

    from hadmc_core.data import DataSplits, Split
    from hadmc_core.decision import DropBound


@runtime_checkable
class Task(Protocol):
    name: str
    #: what ``metric`` returns, e.g. "top1" (points, higher is better)
    metric_name: str

    def loss(self, outputs: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch (fine-tuning, distillation's hard-label term)."""
        ...

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor,
                     temperature: float) -> torch.Tensor:
        """Output-distillation loss of a batch against the teacher's outputs."""
        ...

    def metric(self, outputs: list[np.ndarray], split: Split) -> float:
        """Score (points, higher is better) of a runtime's outputs on ``split``."""
        ...

    def per_image(self, outputs: list[np.ndarray], split: Split) -> Any:
        """What the task keeps of a runtime's outputs on ``split`` to compare two models on
        the same images later (``drop_bound``) without running them again."""
        ...

    def drop_bound(self, base: Any, cand: Any, split: Split,
                   confidence: float) -> DropBound:
        """The metric's drop from ``base`` to ``cand`` (two ``per_image`` results on the
        same images) and its one-sided upper confidence bound (``hadmc_core.decision``)."""
        ...

    def check_model(self, model_outputs_shape: tuple[int, ...], data: DataSplits) -> None:
        """Raise a HadmcError saying what to fix when the outputs do not fit the data."""
        ...

    def warnings(self, baseline_metric: float, data: DataSplits) -> list[str]:
        """Sentences about a baseline that looks wrong for the data (report ``warnings``)."""
        ...

    def head(self, module: nn.Module, example: torch.Tensor) -> str | list[str] | None:
        """Name of the layer that produces the model's output (never pruned), or the names
        of several (a detector's per-level predictions)."""
        ...

    def feature_points(self, module: nn.Module, example: torch.Tensor, n: int) -> list[str]:
        """Up to ``n`` module names whose outputs distillation aligns, deepest last."""
        ...

    def load_data(self, name_or_path: str, **options: object) -> DataSplits:
        """Read a dataset with the task's train/validation/test splits."""
        ...

    def export(self, model: nn.Module, example: torch.Tensor, path: Path,
               data: DataSplits) -> Path:
        """Write the ONNX graph the runtime measures and the device receives."""
        ...

    def predict(self, backend: Any, path: Path, x: np.ndarray, threads: int | None = None
                ) -> list[np.ndarray]:
        """The outputs ``metric`` scores, of the graph at ``path`` run by ``backend`` on
        the samples ``x``."""
        ...


class GraphTask:
    """Structural parts shared by tasks: head and feature points from the traced graph
    (``hadmc_core.tasks.graph`` documents the rules). Output distillation is the KL
    divergence of temperature-softened outputs along dimension 1."""

    name = ""
    metric_name = ""

    def head(self, module: nn.Module, example: torch.Tensor) -> str | list[str] | None:
        return graph.find_head(module, example)

    def feature_points(self, module: nn.Module, example: torch.Tensor, n: int) -> list[str]:
        head = self.head(module, example)
        return graph.feature_points(module, example, n,
                                    head if head is None or isinstance(head, str) else head[0])

    def export(self, model: nn.Module, example: torch.Tensor, path: Path,
               data: DataSplits) -> Path:
        """The model as ONNX with a dynamic batch axis (``onnx_io.export_onnx``)."""
        from hadmc_core.onnx_io import export_onnx

        return export_onnx(model, example, path)

    def predict(self, backend: Any, path: Path, x: np.ndarray, threads: int | None = None
                ) -> list[np.ndarray]:
        """Every output, run in batches and concatenated (``Backend.predict``)."""
        return list(backend.predict(path, x, threads=threads))

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor,
                     temperature: float) -> torch.Tensor:
        t = temperature
        return t * t * F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1),
                                reduction="batchmean")
