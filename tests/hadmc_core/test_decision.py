"""Accuracy decisions: paired upper bounds of a candidate's drop on constructed predictions,
the controller's rule, and the measurer pairing candidates with the kept baseline."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hadmc_core import decision, tasks
from hadmc_core.backends import get as get_backend
from hadmc_core.compress import sized_validation
from hadmc_core.config import MeasureConfig, PipelineConfig
from hadmc_core.data import DataSplits, Split, with_validation
from hadmc_core.errors import ConfigError, DatasetError, HadmcError
from hadmc_core.measure import Measurer
from hadmc_core.onnx_io import export_onnx
from hadmc_core.pipeline import violations
from hadmc_core.report import Candidate, ModelStats

TASK = tasks.get("classification")


def _predictions(n: int, right: float, lost: int, gained: int, classes: int = 10,
                 seed: int = 0) -> tuple[Split, np.ndarray, np.ndarray]:
    """Labels and two models' logits on the same ``n`` images: the baseline gets a fraction
    ``right`` right; the candidate loses ``lost`` of those and gains ``gained`` others."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    base_ok = np.zeros(n, bool)
    base_ok[rng.permutation(n)[:int(n * right)]] = True
    cand_ok = base_ok.copy()
    cand_ok[rng.permutation(np.flatnonzero(base_ok))[:lost]] = False
    cand_ok[rng.permutation(np.flatnonzero(~base_ok))[:gained]] = True

    def logits(ok: np.ndarray) -> np.ndarray:
        pred = np.where(ok, y, (y + 1) % classes)
        out = rng.normal(size=(n, classes)).astype(np.float32)
        out[np.arange(n), pred] += 10
        return out

    return Split(np.zeros((n, 1, 2, 2), np.float32), y), logits(base_ok), logits(cand_ok)


def _bound(split: Split, base: np.ndarray, cand: np.ndarray,
           confidence: float = 0.95) -> decision.DropBound:
    return TASK.drop_bound(TASK.per_image([base], split), TASK.per_image([cand], split), split,
                           confidence)


def test_per_image_results_average_to_the_metric():
    split, base, _ = _predictions(1000, 0.84, 0, 0)
    assert TASK.per_image([base], split).mean() == pytest.approx(TASK.metric([base], split))
    assert TASK.metric([base], split) == pytest.approx(84.0)


def test_candidate_worse_than_the_limit_by_more_than_noise_is_refused_one_within_passes():
    # 5,000 images at 84 %: the candidate loses 120, gains 20 -> 2.0 points drop.
    split, base, worse = _predictions(5000, 0.84, 120, 20)
    b = _bound(split, base, worse)
    assert b.point == pytest.approx(2.0) and b.method == "paired-normal" and b.n == 5000
    assert 2.2 < b.upper < 3.0  # the paired margin at 140 discordant images is ~0.3 point
    assert not decision.within(b, 1.0)
    # Loses 40, gains 30 -> 0.2 point: within a 1-point limit even at 95 %.
    split, base, close = _predictions(5000, 0.84, 40, 30)
    b = _bound(split, base, close)
    assert b.point == pytest.approx(0.2) and decision.within(b, 1.0)


def test_point_drop_under_the_limit_with_an_upper_bound_over_it_is_refused():
    # 0.9 point measured drop (the demo's kind of decision): 70 lost, 25 gained.
    split, base, cand = _predictions(5000, 0.84, 70, 25)
    b = _bound(split, base, cand)
    assert b.point == pytest.approx(0.9) and b.upper > 1.0
    assert not decision.within(b, 1.0)
    # At confidence 0.5 the bound is the point estimate: the old rule accepted it.
    assert decision.within(_bound(split, base, cand, confidence=0.5), 1.0)
    assert _bound(split, base, cand, confidence=0.5).method == "point"


def test_small_split_gives_a_wide_bound_and_no_disagreement_is_not_certainty():
    split_big, b_big, c_big = _predictions(5000, 0.84, 100, 50)
    split_small, b_small, c_small = _predictions(50, 0.84, 1, 0)
    big, small = _bound(split_big, b_big, c_big), _bound(split_small, b_small, c_small)
    assert small.margin > 5 * big.margin
    # 20 images and the two models agree on every one: still several points of doubt.
    split, base, same = _predictions(20, 0.9, 0, 0)
    b = _bound(split, base, same)
    assert b.point == 0 and b.upper > 5.0
    assert not decision.within(b, 1.0)


def test_upper_bound_holds_at_its_confidence_over_repeated_splits():
    # True drop exactly at the limit (1 point: 3 % lost, 2 % gained): a 95 % bound may
    # fall below it about 5 % of the time; the point estimate about half the time.
    rng = np.random.default_rng(1)
    below, below_point, n = 0, 0, 2000
    for _ in range(400):
        u = rng.random(n)
        d = np.where(u < 0.03, 100.0, np.where(u < 0.05, -100.0, 0.0))
        b = decision.paired_mean_bound(np.full(n, 100.0), 100.0 - d, 0.95)
        below += b.upper < 1.0
        below_point += b.point < 1.0
    assert below / 400 < 0.08
    assert below_point / 400 > 0.35


def test_bootstrap_bound_pairs_images_and_agrees_with_the_normal_one_on_a_mean():
    split, base, cand = _predictions(3000, 0.84, 60, 20)
    pb, pc = TASK.per_image([base], split), TASK.per_image([cand], split)

    def top1_on(scores: np.ndarray, idx: np.ndarray) -> float:
        return float(scores[idx].mean(dtype=np.float64))

    boot = decision.paired_bootstrap_bound(top1_on, pb, pc, len(split), 0.95, resamples=400)
    normal = decision.paired_mean_bound(pb, pc, 0.95)
    assert boot.method == "paired-bootstrap" and boot.point == pytest.approx(normal.point)
    assert boot.margin == pytest.approx(normal.margin, rel=0.3)
    # Unpaired resampling would see both models' full spread (~1.5 points at n=3000).
    assert boot.margin < 0.6


def test_split_warning_when_the_margin_eats_the_limit():
    assert decision.split_warning([0.2, 0.3], 5000, 1.0, 0.95) is None
    msg = decision.split_warning([0.7, 0.9], 500, 1.0, 0.95)
    assert msg is not None and "500 images" in msg and "under 0.30" in msg


def test_confidence_is_validated_in_the_config():
    assert PipelineConfig().constraints.confidence == 0.95
    with pytest.raises(ConfigError, match="confidence"):
        PipelineConfig.from_dict({"constraints": {"confidence": 0.4}})


def test_auto_validation_size_grows_the_split_only_for_a_tight_limit():
    # Fashion-MNIST: 5,000 validation and 55,000 training images.
    assert decision.auto_validation_size(5000, 55000, 1.0, 0.95) == 5000
    assert decision.auto_validation_size(5000, 55000, 0.5, 0.95) == 12987
    assert decision.auto_validation_size(5000, 55000, 0.5, 0.5) == 5000   # point rule
    assert decision.auto_validation_size(5000, 55000, 0.0, 0.95) == 5000
    # A limit no split the training images can spare would reach keeps the dataset's.
    assert decision.auto_validation_size(5000, 55000, 0.2, 0.95) == 5000
    # digits (269 and 1,257): 3 points needs 361 (92 from training); 1 point would need
    # 3,247, more than a quarter of training can give.
    assert decision.auto_validation_size(269, 1257, 3.0, 0.95) == 361
    assert decision.auto_validation_size(269, 1257, 1.0, 0.95) == 269


@pytest.mark.parametrize("limit", [0.5, 1.0])
def test_auto_size_gives_a_typical_candidate_a_margin_of_half_the_limit(limit):
    n = decision.images_for_margin(limit / 2, 0.95)
    # A candidate disagreeing with its baseline on 3 % of the images, 2 % lost, 1 % gained.
    split, base, cand = _predictions(n, 0.9, int(n * 0.02), int(n * 0.01))
    margin = _bound(split, base, cand).margin
    assert margin == pytest.approx(limit / 2, rel=0.05)
    # The dataset's 5,000 images leave a wider one at the tight limit.
    small, base, cand = _predictions(5000, 0.9, 100, 50)
    assert (_bound(small, base, cand).margin > limit / 2) == (n > 5000)


def _splits(n_train: int, n_val: int) -> DataSplits:
    def split(start: int, n: int) -> Split:
        ids = np.arange(start, start + n)
        return Split(ids.astype(np.float32).reshape(-1, 1, 1, 1), ids)
    return DataSplits("ids", split(0, n_train), split(10**6, n_val), split(2 * 10**6, 5), 10)


def test_validation_is_topped_up_from_the_end_of_the_training_split():
    data = _splits(100, 10)
    got = with_validation(data, 30)
    assert len(got.val) == 30 and len(got.train) == 80 and got.val_from_train == 20
    assert list(got.val.y[:10]) == list(data.val.y)            # the dataset's own first
    assert list(got.val.y[10:]) == list(range(80, 100))        # then training's last
    assert list(got.train.y) == list(range(80))                # no image in both
    assert got.val.x[:, 0, 0, 0].tolist() == got.val.y.tolist()
    assert with_validation(data, 10) is data
    with pytest.raises(DatasetError, match="would take 100 of the 100 training images"):
        with_validation(data, 110)


def test_sized_validation_follows_the_config():
    data = _splits(55000, 5000)

    def cfg(limit: float, images: object) -> PipelineConfig:
        return PipelineConfig.from_dict({"constraints": {"max_accuracy_drop": limit,
                                                         "validation_images": images}})

    assert len(sized_validation(data, cfg(0.5, "auto")).val) == 12987
    assert sized_validation(data, cfg(1.0, "auto")) is data
    assert sized_validation(data, cfg(0.5, "dataset")) is data
    assert len(sized_validation(data, cfg(1.0, 6000)).val) == 6000
    with pytest.raises(HadmcError, match="fewer than the dataset's own"):
        sized_validation(data, cfg(1.0, 4000))


@pytest.mark.parametrize("bad", ["lots", 0, -5, True, 2.5])
def test_validation_images_is_validated_in_the_config(bad):
    assert PipelineConfig().constraints.validation_images == "auto"
    with pytest.raises(ConfigError, match="validation_images"):
        PipelineConfig.from_dict({"constraints": {"validation_images": bad}})
    cfg = PipelineConfig.from_dict({"constraints": {"validation_images": 7000}})
    assert PipelineConfig.from_dict(json.loads(cfg.to_json())) == cfg


def _ctx(limit: float, confidence: float = 0.95) -> SimpleNamespace:
    cfg = PipelineConfig.from_dict({"constraints": {"max_accuracy_drop": limit,
                                                    "confidence": confidence}})
    base = ModelStats(90.0, 90.0, 1.0, 1.0, 100, 10, 10)
    return SimpleNamespace(cfg=cfg, baseline=base)


def test_controller_refuses_by_the_upper_bound_and_says_both_figures():
    cand = Candidate("c0-q0", 0.5, 0, 89.1, 0.5, 50, 5, 5, val_drop=0.9, val_drop_upper=1.3)
    why = violations(_ctx(1.0), cand)  # type: ignore[arg-type]
    assert why == ["validation drop 0.90 points, upper bound 1.30 at 95% confidence > 1.0"]
    assert violations(_ctx(1.5), cand) == []  # type: ignore[arg-type]


class _Scale(nn.Module):
    """Logits = a fixed linear map of the flattened image, optionally with some classes
    muted (a 'compressed' model that gets those images wrong)."""

    def __init__(self, weight: torch.Tensor, muted: list[int]) -> None:
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.fc.weight.data = weight.clone()
        self.fc.weight.data[muted] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_measurer_keeps_the_baseline_and_pairs_each_candidate(tmp_path: Path):
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(size=(4, 16)).astype(np.float32))
    x = rng.normal(size=(400, 1, 4, 4)).astype(np.float32)
    y = (x.reshape(400, -1) @ w.numpy().T).argmax(1)  # the baseline is always right
    val = Split(x, y)
    example = torch.from_numpy(x[:1])
    base_path = export_onnx(_Scale(w, []), example, tmp_path / "base.onnx")
    cand_path = export_onnx(_Scale(w, [3]), example, tmp_path / "cand.onnx")
    m = Measurer(get_backend("onnxruntime"), TASK, None,  # type: ignore[arg-type]
                 MeasureConfig(runs=2, warmup=1, threads=1), (1, 4, 4), "measured")
    with pytest.raises(RuntimeError, match="baseline"):
        m.val_drop(cand_path, val)
    base = m.stats(base_path, (0, 0), fp32_path=base_path, precisions={}, test=False,
                   val=val, test_split=val, baseline=True)
    assert base.val_accuracy == 100.0 and base.val_drop is None
    calls: list[Path] = []
    predict = m.predict
    m.predict = lambda p, xs: calls.append(p) or predict(p, xs)  # type: ignore[method-assign]
    cand = m.stats(cand_path, (0, 0), fp32_path=cand_path, precisions={}, test=False,
                   val=val, test_split=val)
    assert calls == [cand_path], "the baseline is not run again"
    muted = w.numpy().copy()
    muted[3] = 0
    lost = 100.0 - 100.0 * float(((x.reshape(400, -1) @ muted.T).argmax(1) == y).mean())
    assert lost > 5
    assert cand.val_drop is not None and cand.val_drop.point == pytest.approx(lost)
    assert cand.val_drop.upper > cand.val_drop.point
    assert cand.to_dict()["val_drop"]["upper"] == round(cand.val_drop.upper, 4)
