"""Models built by factories, for ``hadmc compress --model tests.hadmc_core.factory_models:NAME``
(a user's own code: nothing here is a built-in architecture)."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two convolutions, global pooling and a linear head; any image size."""

    def __init__(self, channels: int, classes: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.features(x))


def small_cnn(channels: int = 1, classes: int = 10, width: int = 8) -> nn.Module:
    return SmallCNN(channels, classes, width)


def refuses(width: int = 8) -> nn.Module:
    raise ValueError(f"width must be a power of two, got {width}")
