"""MobileNetV2: depthwise separable inverted residuals with linear bottlenecks."""

from __future__ import annotations

from torch import Tensor, nn


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, 1))
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


# t (expansion), c (channels), n (repeats), s (stride of the first)
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    """MobileNetV2. ``stem='small'`` uses stride 1 in the stem and first stage for small images."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1000, stem: str = "imagenet",
        width: float = 1.0,
    ) -> None:
        super().__init__()
        small = stem == "small"
        cin = _make_divisible(32 * width)
        last = _make_divisible(1280 * max(1.0, width))
        feats: list[nn.Module] = [ConvBNReLU(in_channels, cin, 3, 1 if small else 2)]
        self.stage_ends: list[int] = []
        for i, (t, c, n, s) in enumerate(_SETTINGS):
            cout = _make_divisible(c * width)
            stride = 1 if (small and i == 1) else s
            for j in range(n):
                feats.append(InvertedResidual(cin, cout, stride if j == 0 else 1, t))
                cin = cout
            self.stage_ends.append(len(feats) - 1)
        feats.append(ConvBNReLU(cin, last, 1))
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))

    def feature_stages(self) -> list[str]:
        ends = self.stage_ends
        return [f"features.{i}" for i in (ends[2], ends[4], ends[6])]
