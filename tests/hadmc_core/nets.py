"""Small models written in the tests (not from the zoo), trained on digits in seconds."""

from __future__ import annotations

import torch
from torch import nn


class ConvNet(nn.Module):
    """No ``feature_stages()``, head not named fc: a 1x1 convolution, then global pooling."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.classifier = nn.Conv2d(32, classes, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.classifier(self.body(x))).flatten(1)


class EinsumPoolNet(ConvNet):
    """The same, pooled with an einsum: its ONNX export has an Einsum node, which the
    ONNX-to-PyTorch converter does not map, so the graph loads graph-only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(self.body(x))
        return torch.einsum("nchw->nc", y) / (y.shape[2] * y.shape[3])


def mlp(classes: int = 10) -> nn.Module:
    """Almost all of its parameter bytes are Linear (Gemm) weights."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128),
                         nn.ReLU(), nn.Linear(128, classes))


def trained(model: nn.Module, digits, epochs: float = 5) -> nn.Module:  # type: ignore[no-untyped-def]
    from hadmc_core.train import TrainConfig, fit

    torch.manual_seed(0)
    fit(model, digits.train, TrainConfig(epochs=epochs, batch_size=64, lr=0.05))
    return model.eval()


#: A pipeline config that runs every stage once, in seconds on digits.
FAST = {"prune": {"ladder": [0.6], "calib_batches": 2},
        "distill": {"epochs": 2, "samples": None, "batch_size": 64},
        "quantize": {"keep_ladder": [0, 2], "calib_samples": 64, "sensitivity_samples": 32},
        "measure": {"runs": 5, "warmup": 2, "in_graph": False},
        "max_candidates": 1, "constraints": {"max_accuracy_drop": 100.0}}
