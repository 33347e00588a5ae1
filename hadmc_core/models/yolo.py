"""A small anchor-free one-stage detector in the YOLOv8 family, written here (no
ultralytics, no torchvision).

- Backbone: strided 3x3 Conv-BN-SiLU stages with C2f blocks (CSP: a 1x1 split into two
  branches, one through n bottlenecks, every intermediate concatenated and fused by a 1x1)
  and SPPF at the end; outputs P3, P4, P5 at strides 8, 16, 32. The C2f split is two 1x1
  convolutions rather than a ``chunk`` of one, so Torch-Pruning sees plain concatenations.
- Neck: PAN (top-down: upsample and concatenate, C2f; bottom-up: strided conv and
  concatenate, C2f); its three outputs are the distillation alignment points
  (``feature_stages``).
- Head: decoupled per level: a box branch (two 3x3 convs, a 1x1 to 4 distances) and a
  class branch (two 3x3 convs, a 1x1 to the class logits). The 1x1s are the head layers
  (``head_layers``), never pruned.
- Output: (batch, anchors, 4 + classes): boxes decoded to x1, y1, x2, y2 in input pixels
  (distances = softplus(raw) * stride from each anchor point, the cell centre) and raw
  class logits. Anchors are ordered P3, P4, P5, each row-major.

Sizes: ``yolo-n`` widths 16-32-64-128-256, ``yolo-s`` twice that; C2f depths 1-2-2-1 in
the backbone and 1 in the neck. The input side is any multiple of 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

STRIDES = (8, 16, 32)
WIDTHS = {"n": (16, 32, 64, 128, 256), "s": (32, 64, 128, 256, 512)}
DEPTHS = (1, 2, 2, 1)


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBN(c, c, 3), ConvBN(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block: two 1x1 branches, n bottlenecks on the second, all concatenated."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        c = cout // 2
        self.cv0, self.cv1 = ConvBN(cin, c), ConvBN(cin, c)
        self.m = nn.ModuleList(Bottleneck(c, shortcut) for _ in range(n))
        self.cv2 = ConvBN((2 + n) * c, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv0(x), self.cv1(x)]
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        c = cin // 2
        self.cv1, self.cv2 = ConvBN(cin, c), ConvBN(4 * c, cout)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Backbone(nn.Module):
    def __init__(self, cin: int, w: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = ConvBN(cin, w[0], 3, 2)
        self.stage1 = nn.Sequential(ConvBN(w[0], w[1], 3, 2), C2f(w[1], w[1], DEPTHS[0]))
        self.stage2 = nn.Sequential(ConvBN(w[1], w[2], 3, 2), C2f(w[2], w[2], DEPTHS[1]))
        self.stage3 = nn.Sequential(ConvBN(w[2], w[3], 3, 2), C2f(w[3], w[3], DEPTHS[2]))
        self.stage4 = nn.Sequential(ConvBN(w[3], w[4], 3, 2), C2f(w[4], w[4], DEPTHS[3]),
                                    SPPF(w[4], w[4]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3 = self.stage2(self.stage1(self.stem(x)))
        p4 = self.stage3(p3)
        return p3, p4, self.stage4(p4)


class PAN(nn.Module):
    def __init__(self, w: tuple[int, ...]) -> None:
        super().__init__()
        c3, c4, c5 = w[2], w[3], w[4]
        self.top4 = C2f(c5 + c4, c4, 1, shortcut=False)
        self.out3 = C2f(c4 + c3, c3, 1, shortcut=False)
        self.down3 = ConvBN(c3, c3, 3, 2)
        self.out4 = C2f(c3 + c4, c4, 1, shortcut=False)
        self.down4 = ConvBN(c4, c4, 3, 2)
        self.out5 = C2f(c4 + c5, c5, 1, shortcut=False)

    def forward(self, p3: torch.Tensor, p4: torch.Tensor, p5: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t4 = self.top4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        n3 = self.out3(torch.cat([F.interpolate(t4, scale_factor=2.0, mode="nearest"), p3], 1))
        n4 = self.out4(torch.cat([self.down3(n3), t4], 1))
        n5 = self.out5(torch.cat([self.down4(n4), p5], 1))
        return n3, n4, n5


class Branch(nn.Module):
    def __init__(self, cin: int, c: int, cout: int, bias: float) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBN(cin, c, 3), ConvBN(c, c, 3)
        self.pred = nn.Conv2d(c, cout, 1)
        assert self.pred.bias is not None
        nn.init.constant_(self.pred.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.cv2(self.cv1(x)))


class YOLO(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 80, stem: str = "small",
                 width: float = 1.0, size: str = "n") -> None:
        super().__init__()
        del stem  # the zoo's option of the classifiers; the detector has one stem
        w = tuple(max(8, int(round(c * width / 8)) * 8) for c in WIDTHS[size])
        self.num_classes = num_classes
        self.backbone = Backbone(in_channels, w)
        self.neck = PAN(w)
        box_c = max(16, w[2] // 2)
        cls_c = max(w[2] // 2, min(num_classes, 100))
        prior = -math.log((1 - 0.01) / 0.01)  # class scores start near 0.01
        self.box = nn.ModuleList(Branch(c, box_c, 4, 1.0) for c in (w[2], w[3], w[4]))
        self.cls = nn.ModuleList(Branch(c, cls_c, num_classes, prior)
                                 for c in (w[2], w[3], w[4]))

    def feature_stages(self) -> list[str]:
        """The neck's outputs (distillation alignment points), shallow to deep."""
        return ["neck.out3", "neck.out4", "neck.out5"]

    def head_layers(self) -> list[str]:
        """The decoupled head's final convolutions (they fix the output width)."""
        return [f"{b}.{i}.pred" for b in ("box", "cls") for i in range(len(STRIDES))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.neck(*self.backbone(x))
        boxes, logits = [], []
        for i, (f, stride) in enumerate(zip(feats, STRIDES, strict=True)):
            h, w = f.shape[2], f.shape[3]
            ys = (torch.arange(h, dtype=f.dtype, device=f.device) + 0.5) * stride
            xs = (torch.arange(w, dtype=f.dtype, device=f.device) + 0.5) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            centre = torch.stack([cx, cy], 0).reshape(1, 2, -1)
            dist = F.softplus(self.box[i](f)).flatten(2) * stride  # (B, 4, hw): l, t, r, b
            boxes.append(torch.cat([centre - dist[:, :2], centre + dist[:, 2:]], 1))
            logits.append(self.cls[i](f).flatten(2))
        return torch.cat([torch.cat(boxes, 2), torch.cat(logits, 2)], 1).transpose(1, 2)


def anchor_points(side: int, device: torch.device | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres (A, 2) and strides (A,) of a ``side`` x ``side`` input, in output
    order."""
    pts, strides = [], []
    for s in STRIDES:
        n = side // s
        c = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) * s
        cy, cx = torch.meshgrid(c, c, indexing="ij")
        pts.append(torch.stack([cx.reshape(-1), cy.reshape(-1)], 1))
        strides.append(torch.full((n * n,), float(s), device=device))
    return torch.cat(pts), torch.cat(strides)


def side_of(anchors: int) -> int:
    """The square input side whose anchor count is ``anchors`` (21/1024 per pixel)."""
    side = int(round(math.sqrt(anchors * 1024 / 21)))
    if side % 32 or side * side * 21 // 1024 != anchors:
        raise ValueError(f"{anchors} anchors do not come from a square input whose side is a "
                         "multiple of 32")
    return side


def yolo_n(**kw: object) -> YOLO:
    return YOLO(size="n", **kw)  # type: ignore[arg-type]


def yolo_s(**kw: object) -> YOLO:
    return YOLO(size="s", **kw)  # type: ignore[arg-type]
