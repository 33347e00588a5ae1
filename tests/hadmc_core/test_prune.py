import pytest
import torch
from torch import nn

from hadmc_core import prune
from hadmc_core.config import PruneConfig
from hadmc_core.models import ArchSpec, build_model


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2", "densenet"])
@pytest.mark.parametrize("importance", ["taylor", "l1"])
def test_pruned_models_stay_consistent(arch, importance, digits):
    torch.manual_seed(0)
    model = build_model(ArchSpec(arch, 1, 10, "small", width=0.5)).eval()
    example = torch.from_numpy(digits.val.x[:2])
    groups, layers = prune.analyze(model, digits.train,
                                   PruneConfig(importance=importance, calib_batches=2), example)
    assert groups and all(len(g.scores) == g.channels for g in groups)
    assert all(a <= b for g in groups for a, b in zip(g.scores, g.scores[1:], strict=False))
    keep = {g.root: max(1, g.channels // 2) for g in groups}
    pruned = prune.apply(model, groups, keep, example)
    out = pruned(torch.from_numpy(digits.test.x[:5]))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    assert prune.count_params(pruned) < 0.5 * prune.count_params(model)
    assert prune.count_macs(pruned, example) < 0.5 * prune.count_macs(model, example)
    # the original is untouched
    assert prune.count_params(model) == prune.count_params(build_model(
        ArchSpec(arch, 1, 10, "small", width=0.5)))
    if arch == "mobilenetv2":  # depthwise convs keep groups == channels
        for m in pruned.modules():
            if isinstance(m, nn.Conv2d) and m.groups > 1:
                assert m.groups == m.in_channels == m.out_channels


def test_taylor_prefers_channels_with_gradient_signal(digits):
    """Zeroed channels carry no Taylor importance, so they are pruned first."""
    torch.manual_seed(0)
    model = build_model(ArchSpec("resnet18", 1, 10, "small", width=0.25)).eval()
    conv = model.layer1[0].conv1
    with torch.no_grad():
        conv.weight[:4] = 0
    example = torch.from_numpy(digits.val.x[:2])
    groups, _ = prune.analyze(model, digits.train, PruneConfig(calib_batches=2), example)
    g = next(g for g in groups if g.root == "layer1.0.conv1")
    assert set(g.order[:4]) == {0, 1, 2, 3}


def test_group_kept_names_the_channels_pruning_keeps(digits):
    """``Group.kept`` (what a report and an update's plan record) is what ``apply`` leaves:
    the BatchNorm after every pruned convolution holds the original's entries at those
    indices, in that order."""
    torch.manual_seed(0)
    model = build_model(ArchSpec("resnet18", 1, 10, "small", width=0.25)).eval()
    with torch.no_grad():  # distinct per-channel values to tell channels apart
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn_like(m.running_mean))
    example = torch.from_numpy(digits.val.x[:2])
    groups, _ = prune.analyze(model, digits.train, PruneConfig(calib_batches=2), example)
    keep = {g.root: max(1, g.channels // 3) for g in groups}
    pruned = prune.apply(model, groups, keep, example)
    before, after = dict(model.named_modules()), dict(pruned.named_modules())
    checked = 0
    for g in groups:
        kept = g.kept(g.keepable(keep[g.root]))
        assert len(kept) == g.keepable(keep[g.root]) and kept == sorted(kept)
        assert sorted(kept + g.removed(len(kept))) == list(range(g.channels))
        for layer in g.outs:
            bn = layer.rsplit("conv", 1)[0] + "bn" + layer.rsplit("conv", 1)[1] \
                if "conv" in layer else None
            if bn not in before:
                continue
            assert torch.equal(after[bn].running_mean, before[bn].running_mean[kept]), bn
            checked += 1
    assert checked >= len(groups)
