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


def test_recovery_grows_with_what_pruning_removed():
    from hadmc_core.techniques.distill import recovery_epochs

    cfg = DistillConfig(epochs=2, removed_scale=2.0, max_epochs=5)
    assert recovery_epochs(cfg, 0.0) == 2
    assert recovery_epochs(cfg, 0.5) == pytest.approx(4.0)
    assert recovery_epochs(cfg, 0.9) == 5  # capped
    assert recovery_epochs(DistillConfig(epochs=2, removed_scale=0), 0.9) == 2  # fixed epochs
    assert recovery_epochs(DistillConfig(epochs=2), 0.5) == 4  # default removed_scale 2


def test_teacher_logits_over_more_images_than_features_keep_the_step_count(digits):
    from tests.hadmc_core.nets import ConvNet

    teacher = ConvNet().eval()
    base = DistillConfig(epochs=1, samples=200, batch_size=50, feature_stages=1,
                         precision="fp32", device="cpu")
    wide = DistillConfig(**{**base.to_dict(), "logit_samples": None})
    small, big = distill.cache_teacher(teacher, digits.train, base), \
        distill.cache_teacher(teacher, digits.train, wide)
    assert len(small.split) == small.n_features == 200
    assert len(big.split) == len(digits.train) and big.n_features == 200
    assert {k: v.shape[0] for k, v in big.features.items()} == {"body": 200}
    # The subset is the start of the larger set: the same images, the same teacher outputs.
    assert (big.split.y[:200] == small.split.y).all()
    assert big.logits[:200] == pytest.approx(small.logits, abs=1e-5)
    steps: dict[str, int] = {}
    for name, cache in (("small", small), ("big", big)):
        student = copy.deepcopy(teacher)
        distill.distill(student, cache, base,
                        progress=lambda _s, _i, total, n=name: steps.__setitem__(n, total))
    assert steps == {"small": 4, "big": 4}


@pytest.mark.parametrize("schedule,start,end", [("onecycle", 0.004, 0.0), ("cosine", 0.1, 0.0),
                                                ("constant", 0.1, 0.1)])
def test_learning_rate_schedules(schedule, start, end):
    from hadmc_core.train import TrainConfig, _scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = _scheduler(opt, TrainConfig(lr=0.1, schedule=schedule), 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(start, abs=1e-3)
    assert lrs[-1] == pytest.approx(end, abs=2e-3)
    assert max(lrs) == pytest.approx(0.1, abs=1e-3)
