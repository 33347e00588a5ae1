"""The fusion check judges the folded model's outputs against their scale: a model whose
outputs are pixel coordinates (a detector) passes, a wrong fold still fails."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hadmc_core import fuse
from hadmc_core.config import FuseConfig
from hadmc_core.context import Work
from hadmc_core.errors import HadmcError
from hadmc_core.techniques.fuse import Fuse


class PixelNet(nn.Module):
    """Conv-BN-SiLU layers whose output is scaled to pixel-like magnitudes (~1e5)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.SiLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.SiLU(),
                                  nn.Conv2d(32, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * 1e5


def _trained_stats(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.05, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _ctx(example: torch.Tensor) -> SimpleNamespace:
    ran: list[str] = []
    stages = SimpleNamespace(add_ran=ran.append, skip=lambda *a: None, ran=ran)
    return SimpleNamespace(example=example, state={}, stages=stages,
                           backend=SimpleNamespace(name="onnxruntime"),
                           stage=lambda name: contextlib.nullcontext())


def test_pixel_scale_outputs_pass_the_fusion_check():
    torch.manual_seed(0)
    model = _trained_stats(PixelNet())
    example = torch.rand(2, 3, 32, 32)
    res = fuse.fold_batchnorm(model, example)
    assert res.fused_pairs == 2 and res.output_scale > 1e4
    # float32 rounding at this scale is far above the old absolute limit (10 x 1e-4) ...
    assert res.max_abs_diff > FuseConfig().tolerance * 10
    # ... and tiny against the outputs
    assert res.max_abs_diff < 1e-5 * res.output_scale
    ctx = _ctx(example)
    work = Work(cid="c0", fraction=1.0, module=model)
    Fuse().apply(ctx, FuseConfig(), work)  # type: ignore[arg-type]
    assert ctx.stages.ran == ["fuse"] and ctx.state["fusion"]["fused_conv_bn"] == 2
    assert isinstance(work.module, torch.fx.GraphModule)


def test_a_wrong_fold_still_fails(monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    model = _trained_stats(PixelNet())
    example = torch.rand(2, 3, 32, 32)
    monkeypatch.setattr(fuse, "fuse_conv_bn_eval", lambda conv, bn: conv)  # drops the BN
    work = Work(cid="c0", fraction=1.0, module=model)
    with pytest.raises(HadmcError, match="fusion changed outputs"):
        Fuse().apply(_ctx(example), FuseConfig(), work)  # type: ignore[arg-type]


@pytest.mark.parametrize("diff,scale,ok", [(5e-4, 0.01, True), (2e-3, 0.01, False),
                                           (0.5, 1e3, True), (2.0, 1e3, False)],
                         ids=["small-outputs-absolute", "small-outputs-over",
                              "pixels-relative", "pixels-over"])
def test_within_is_relative_above_one(diff: float, scale: float, ok: bool):
    res = fuse.FusionResult(nn.Identity(), 1, diff, scale)
    assert res.within(1e-3) is ok
