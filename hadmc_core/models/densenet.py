"""A compact DenseNet-BC: every layer concatenates its output to its input."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))
        return torch.cat([x, out], 1)


class Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2))


class DenseNet(nn.Module):
    """DenseNet-BC with three dense blocks (growth 12 by default), for small inputs."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 10, stem: str = "small",
        width: float = 1.0, growth: int = 12, block_layers: tuple[int, ...] = (6, 12, 8),
    ) -> None:
        super().__init__()
        growth = max(4, int(round(growth * width)))
        c = 2 * growth
        stride = 1 if stem == "small" else 2
        self.stem = nn.Conv2d(in_channels, c, 3, stride, 1, bias=False)
        blocks: list[nn.Module] = []
        for i, n in enumerate(block_layers):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            blocks.append(nn.Sequential(*layers))
            if i < len(block_layers) - 1:
                blocks.append(Transition(c, c // 2))
                c //= 2
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.norm(self.blocks(self.stem(x)))).flatten(1))

    def feature_stages(self) -> list[str]:
        return ["blocks.1", "blocks.3", "blocks.4"]
