import copy

import pytest
import torch

from hadmc_core import distill, prune
from hadmc_core.config import DistillConfig, PruneConfig
from hadmc_core.train import evaluate


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_distillation_lowers_the_student_loss(trained_digits_resnet, digits, precision):
    teacher, _spec, _path = trained_digits_resnet
    example = torch.from_numpy(digits.val.x[:2])
    groups, _ = prune.analyze(teacher, digits.train, PruneConfig(calib_batches=2), example)
    student = prune.apply(teacher, groups, {g.root: max(1, g.channels // 3) for g in groups},
                          example)
    before = evaluate(student, digits.val)
    cfg = DistillConfig(epochs=3, samples=None, batch_size=64, lr=0.02, feature_stages=2,
                        precision=precision)
    cache = distill.cache_teacher(teacher, digits.train, cfg)
    assert set(cache.features) == {"layer3", "layer4"}
    untouched = copy.deepcopy(teacher.state_dict())
    losses = distill.distill(student, cache, cfg)
    assert losses[-1] < 0.7 * losses[0], losses
    assert evaluate(student, digits.val) > before
    for k, v in teacher.state_dict().items():  # the teacher is never trained
        assert torch.equal(v, untouched[k]), k


def test_bf16_is_chosen_only_where_native(monkeypatch):
    from hadmc_core.hal import latency
    from hadmc_core.train import use_bf16

    cpu = torch.device("cpu")
    assert use_bf16("bf16", cpu) and not use_bf16("fp32", cpu)
    monkeypatch.setattr(latency, "cpu_flags", lambda: {"avx2", "fma"})
    assert not use_bf16("auto", cpu)
    monkeypatch.setattr(latency, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert use_bf16("auto", cpu)
