"""Five architectures of well-known families that the HAD-MC zoo does not have.

They are ordinary PyTorch modules written the way their papers (and most user code)
write them, with nothing HAD-MC-specific: no ``feature_stages()``, heads not named by
convention, ``x.view(x.size(0), -1)`` flattening, grouped and depthwise convolutions,
squeeze-and-excitation gating, dense concatenations and SiLU. ``bench/byo.py`` trains
each briefly, exports it to ONNX and compresses the ONNX file through the CLI, so the
pipeline sees them exactly as it would see a user's model.

Input: 1x28x28 (Fashion-MNIST); ``in_channels`` and ``num_classes`` are arguments.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class VGG(nn.Module):
    """VGG-11 with batch norm (Simonyan & Zisserman), narrowed for 28x28 inputs."""

    plan = (32, "M", 64, "M", 128, 128, "M", 256, 256)

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += list(conv_bn(c, int(v)))
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(c, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.view(x.size(0), -1))


class ResNeXtBlock(nn.Module):
    """Aggregated residual transformation (Xie et al.): 1x1, grouped 3x3, 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int = 8,
                 group_width: int = 4) -> None:
        super().__init__()
        mid = cardinality * group_width
        self.conv1 = conv_bn(cin, mid, 1)
        self.conv2 = conv_bn(mid, mid, 3, stride, groups=cardinality)
        self.conv3 = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNeXt(nn.Module):
    """ResNeXt-29-style (8x4d), three stages of two blocks."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32)
        blocks, c = [], 32
        for cout, stride, gw in ((64, 1, 4), (128, 2, 8), (256, 2, 16)):
            blocks += [ResNeXtBlock(c, cout, stride, group_width=gw),
                       ResNeXtBlock(cout, cout, 1, group_width=gw)]
            c = cout
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    """Channel gating of Hu et al.: global pool, bottleneck MLP, sigmoid, multiply."""

    def __init__(self, c: int, reduction: int = 4, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(8, c // reduction), 1)
        self.fc2 = nn.Conv2d(max(8, c // reduction), c, 1)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class SEBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(cout))
        self.se = SqueezeExcite(cout)
        self.down = (None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        return torch.relu(self.se(self.conv2(self.conv1(x))) + idt)


class SEResNet(nn.Module):
    """SE-ResNet-18-style: basic blocks with squeeze-and-excitation, four stages."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32)
        layers, c = [], 32
        for cout, stride in ((32, 1), (64, 2), (128, 2), (256, 2)):
            layers += [SEBasicBlock(c, cout, stride), SEBasicBlock(cout, cout, 1)]
            c = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class DenseLayerBC(nn.Module):
    """BN-ReLU-Conv1x1 (4k) then BN-ReLU-Conv3x3 (k), concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                                        nn.Conv2d(cin, 4 * growth, 1, bias=False))
        self.conv = nn.Sequential(nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                  nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bottleneck(x))], 1)


class DenseNetBC(nn.Module):
    """DenseNet-BC (Huang et al.): growth 16, three blocks of six layers, compression 0.5."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, growth: int = 16,
                 depth: tuple[int, ...] = (6, 6, 6)) -> None:
        super().__init__()
        c = 2 * growth
        mods: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)]
        for i, n in enumerate(depth):
            for _ in range(n):
                mods.append(DenseLayerBC(c, growth))
                c += growth
            if i < len(depth) - 1:
                mods += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                         nn.AvgPool2d(2)]
                c //= 2
        mods += [nn.BatchNorm2d(c), nn.ReLU()]
        self.net = nn.Sequential(*mods)
        self.out = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x).mean((2, 3)))


class MBConv(nn.Module):
    """EfficientNet's inverted bottleneck: expand 1x1, depthwise kxk, SE, project 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, k: int = 3) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid, 1, act=nn.SiLU) if expand != 1 else nn.Identity()
        self.dw = conv_bn(mid, mid, k, stride, groups=mid, act=nn.SiLU)
        self.se = SqueezeExcite(mid, reduction=4 * expand, act=nn.SiLU)
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-B0-style: MBConv stages with depthwise convolutions, SE and SiLU."""

    stages = ((1, 16, 1, 1, 3), (6, 24, 2, 1, 3), (6, 40, 2, 2, 5), (6, 80, 2, 2, 3),
              (6, 112, 1, 1, 5))

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, 32, act=nn.SiLU)
        blocks, c = [], 32
        for expand, cout, n, stride, k in self.stages:
            for i in range(n):
                blocks.append(MBConv(c, cout, stride if i == 0 else 1, expand, k))
                c = cout
        self.blocks = nn.Sequential(*blocks)
        self.top = conv_bn(c, 320, 1, act=nn.SiLU)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(320, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.top(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


MODELS = {"vgg11": VGG, "resnext": ResNeXt, "se-resnet": SEResNet,
          "densenet-bc": DenseNetBC, "efficientnet": EfficientNetLite}
