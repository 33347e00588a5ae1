"""Feature distillation is stable whatever the magnitude of the aligned features: a teacher
whose feature stage outputs ~1e-6 (as a detector's neck can) distills as one at ~1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from hadmc_core import distill
from hadmc_core.config import DistillConfig
from hadmc_core.train import evaluate


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class ScaledNet(nn.Module):
    """A small classifier whose declared feature stage is its body times ``factor`` (the
    classifier undoes it, so outputs do not depend on ``factor``)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.feat = Scale(factor)
        self.head = nn.Sequential(Scale(1 / factor), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(32, 10))

    def feature_stages(self) -> list[str]:
        return ["feat"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feat(self.body(x)))


@pytest.fixture(scope="module")
def teacher(digits) -> nn.Module:  # type: ignore[no-untyped-def]
    from hadmc_core.train import TrainConfig, fit

    torch.manual_seed(0)
    model = ScaledNet(1.0)
    fit(model, digits.train, TrainConfig(epochs=10, batch_size=64, lr=0.05))
    return model.eval()


def _distilled(teacher: nn.Module, factor: float, digits  # type: ignore[no-untyped-def]
               ) -> tuple[list[float], float, float]:
    t = copy.deepcopy(teacher)
    t.feat.factor, t.head[0].factor = factor, 1 / factor
    student = copy.deepcopy(t)
    torch.manual_seed(2)
    student.body[3].reset_parameters()  # a damaged student, as after pruning
    before = evaluate(student, digits.val)
    cfg = DistillConfig(epochs=2, samples=600, batch_size=64, lr=0.02, feature_stages=1,
                        alpha_kd=0.7, beta_feature=1.0, precision="fp32", device="cpu")
    torch.manual_seed(1)
    cache = distill.cache_teacher(t, digits.train, cfg)
    assert list(cache.features) == ["feat"]
    losses = distill.distill(student, cache, cfg)
    return losses, before, evaluate(student, digits.val)


def test_tiny_teacher_features_distill_like_ordinary_ones(teacher, digits):
    _, _, base_acc = _distilled(teacher, 1.0, digits)
    tiny_losses, before, tiny_acc = _distilled(teacher, 1e-6, digits)
    assert np.isfinite(tiny_losses).all()
    assert tiny_losses[0] < 50, tiny_losses[:3]  # the feature term starts of order 1
    assert tiny_losses[-1] < tiny_losses[0]
    assert tiny_acc > before + 5 and abs(tiny_acc - base_acc) < 2.0, (before, tiny_acc, base_acc)
