"""Image classification: cross-entropy, top-1 accuracy, (batch, classes) outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from hadmc_core.decision import DropBound, paired_mean_bound
from hadmc_core.errors import HadmcError
from hadmc_core.tasks.base import GraphTask

if TYPE_CHECKING:
    from hadmc_core.data import DataSplits, Split

#: A model whose top-1 is within this many points of chance has learned next to nothing.
NEAR_CHANCE_POINTS = 5.0


def chance_accuracy(num_classes: int) -> float:
    """Top-1 % of guessing (uniformly) among ``num_classes``."""
    return 100.0 / max(1, num_classes)


def near_chance(accuracy: float, num_classes: int) -> bool:
    """Whether a top-1 % is within NEAR_CHANCE_POINTS of chance (or below it)."""
    return accuracy < chance_accuracy(num_classes) + NEAR_CHANCE_POINTS


def chance_warnings(accuracy: float, num_classes: int) -> list[str]:
    """The report's warning for a baseline top-1 near chance (none otherwise)."""
    if not near_chance(accuracy, num_classes):
        return []
    return [f"the baseline's validation top-1 is {accuracy:.1f}%, within "
            f"{NEAR_CHANCE_POINTS:g} points of chance ({chance_accuracy(num_classes):.1f}% "
            f"for {num_classes} classes): it looks untrained, or trained for other data, so "
            "the accuracy kept by compression means little; train it first (hadmc train)"]


class Classification(GraphTask):
    name = "classification"
    metric_name = "top1"

    def loss(self, outputs: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, batch_targets)

    def metric(self, outputs: list[np.ndarray], split: Split) -> float:
        """Top-1 accuracy in percent of the first output (logits or probabilities)."""
        pred = np.asarray(outputs[0]).reshape(len(split), -1).argmax(1)
        return 100.0 * float((pred == split.y).sum()) / max(1, len(split))

    def per_image(self, outputs: list[np.ndarray], split: Split) -> np.ndarray:
        """100 where top-1 is right, 0 where not (their mean is ``metric``)."""
        pred = np.asarray(outputs[0]).reshape(len(split), -1).argmax(1)
        return np.where(pred == split.y, 100.0, 0.0).astype(np.float32)

    def drop_bound(self, base: np.ndarray, cand: np.ndarray, split: Split,
                   confidence: float) -> DropBound:
        return paired_mean_bound(base, cand, confidence, value_range=100.0)

    def check_model(self, model_outputs_shape: tuple[int, ...], data: DataSplits) -> None:
        shape = tuple(int(d) for d in model_outputs_shape)
        if len(shape) != 2:
            raise HadmcError(f"a classifier must output (batch, classes); this model outputs "
                             f"shape {shape}: end it with a layer that gives one score per "
                             "class (e.g. global pooling and flatten before the output)")
        classes = shape[1]
        top = max(int(s.y.max(initial=0)) for s in (data.train, data.val, data.test))
        if top >= classes:
            raise HadmcError(f"dataset labels go up to {top} but the model has {classes} "
                             "classes (outputs); give a model with one output per class "
                             f"({data.num_classes}) or relabel the dataset")

    def warnings(self, baseline_metric: float, data: DataSplits) -> list[str]:
        return chance_warnings(baseline_metric, data.num_classes)

    def load_data(self, name_or_path: str, **options: object) -> DataSplits:
        from hadmc_core.data import load_dataset

        num_classes = options.get("num_classes")
        return load_dataset(name_or_path, int(num_classes) if num_classes else None)  # type: ignore[call-overload]


def _register() -> None:
    from hadmc_core.tasks import register

    register(Classification())


_register()
