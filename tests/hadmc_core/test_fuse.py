import pytest
import torch
from torch import nn

from hadmc_core.fuse import fold_batchnorm
from hadmc_core.models import ARCHITECTURES, ArchSpec, build_model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_folding_is_equivalent(arch):
    torch.manual_seed(0)
    model = build_model(ArchSpec(arch, 1, 10, "small")).eval()
    for m in model.modules():  # non-trivial statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(4, 1, 28, 28)
    res = fold_batchnorm(model, x)
    assert res.fused_pairs > 0
    remaining = [m for m in res.model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(remaining) == before - res.fused_pairs
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(res.model(x), ref, atol=1e-5 * max(1.0, float(ref.abs().max())))
    assert res.max_abs_diff < 1e-5 * max(1.0, float(ref.abs().max()))
