"""Models with grouped convolutions for ``hadmc compress --model
tests.hadmc_core.factory_grouped:NAME`` (a user's own code, not a built-in architecture)."""

from __future__ import annotations

import torch
from torch import nn


class GroupedNet(nn.Module):
    """A ResNeXt-style bottleneck: 1x1, a 3x3 convolution in 4 groups, 1x1, and a head."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 16,
                 groups: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 24, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class FailsInTraining(GroupedNet):
    """Evaluates fine, raises once trained: a failure inside compression (distillation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("shape\n  mismatch in a user layer")
        return super().forward(x)


def grouped(channels: int = 1, classes: int = 10) -> nn.Module:
    return GroupedNet(channels, classes)


def fails_in_training(channels: int = 1, classes: int = 10) -> nn.Module:
    return FailsInTraining(channels, classes)
