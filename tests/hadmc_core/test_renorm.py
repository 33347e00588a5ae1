"""A network converted from ONNX has its BatchNorms folded; before it trains, BatchNorm is
restored after every convolution, identity at inference, and folded back before export."""

from __future__ import annotations

import torch
from torch import nn

from hadmc_core.fuse import fold_batchnorm
from hadmc_core.onnx_io import export_onnx
from hadmc_core.renorm import SUFFIX, needs_norm, restore_batchnorm
from hadmc_core.sources import onnx_to_torch
from tests.hadmc_core.nets import ConvNet, trained


def _converted(digits, tmp_path):  # type: ignore[no-untyped-def]
    model = trained(ConvNet(), digits, epochs=2)
    path = export_onnx(model, torch.from_numpy(digits.val.x[:1]), tmp_path / "m.onnx")
    converted = onnx_to_torch(path)
    return converted[0] if isinstance(converted, tuple) else converted


def test_a_converted_model_gets_identity_batchnorms_that_fold_back(digits, tmp_path) -> None:
    gm = _converted(digits, tmp_path)
    assert needs_norm(gm)  # the export folded ConvNet's three BatchNorms
    x = torch.from_numpy(digits.val.x[:64])
    with torch.no_grad():
        before = gm.eval()(x)
    assert restore_batchnorm(gm, digits.train.x[:256]) == 4  # three in the body, the head
    assert not needs_norm(gm)
    bns = [n for n, m in gm.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 4 and all(n.endswith(SUFFIX) for n in bns)
    with torch.no_grad():
        after = gm.eval()(x)
    assert torch.allclose(before, after, atol=1e-4 * float(before.abs().max()))
    # in training mode a BatchNorm normalizes by the batch: each channel's output has mean
    # `bias` and standard deviation `weight` over the batch, as the original network had
    bn = dict(gm.named_modules())[bns[0]]
    seen = {}
    h = bn.register_forward_hook(lambda m, i, o: seen.setdefault("y", o.detach()))
    gm.train()(torch.from_numpy(digits.train.x[:256]))
    h.remove()
    y = seen["y"]
    assert torch.allclose(y.mean((0, 2, 3)), bn.bias.detach(), atol=1e-4)
    # fusion folds every restored BatchNorm back into its convolution
    fused = fold_batchnorm(gm.eval(), x)
    assert fused.fused_pairs == 4 and fused.max_abs_diff < 1e-4 * float(before.abs().max())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.model.modules())


def test_a_module_with_its_own_normalization_is_left_alone(digits) -> None:
    assert not needs_norm(ConvNet())
    assert not needs_norm(torch.fx.symbolic_trace(ConvNet()))
    plain = torch.fx.symbolic_trace(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    assert not needs_norm(plain)  # no convolution
