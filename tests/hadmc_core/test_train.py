"""``hadmc train``'s default length gives a useful model; near-chance models are called out
by ``hadmc train`` and ``hadmc compress``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hadmc_core.cli import _register, app
from hadmc_core.compress import baseline_warnings
from hadmc_core.models import ArchSpec, build_model, save_weights
from hadmc_core.report import ModelStats
from hadmc_core.train import default_epochs, near_chance

_register()
runner = CliRunner()
FAST_COMPRESS = {"prune": {"enabled": False}, "distill": {"enabled": False},
                 "quantize": {"keep_ladder": [0], "calib_samples": 32, "sensitivity_samples": 16},
                 "measure": {"runs": 5, "warmup": 2, "in_graph": False}, "max_candidates": 1}


@pytest.mark.parametrize(("samples", "batch", "epochs"), [
    (1257, 128, 10),    # digits' train split: 10 steps an epoch
    (55000, 128, 1),    # Fashion-MNIST's: 430 steps an epoch
    (1257, 32, 3),      # 40 steps an epoch
    (12, 128, 100),     # one step an epoch
    (12800, 128, 1),    # exactly 100 steps
], ids=["digits", "fashion-mnist", "digits-batch-32", "tiny", "exact"])
def test_default_epochs_give_at_least_100_steps(samples: int, batch: int, epochs: int) -> None:
    assert default_epochs(samples, batch) == epochs


@pytest.mark.parametrize(("accuracy", "classes", "near"), [
    (9.7, 10, True), (14.9, 10, True), (15.1, 10, False), (52.0, 2, True), (56.0, 2, False),
    (3.0, 100, True), (98.0, 10, False)], ids=lambda v: str(v))
def test_near_chance_is_within_5_points_of_guessing(accuracy: float, classes: int,
                                                    near: bool) -> None:
    assert near_chance(accuracy, classes) is near


def test_default_train_on_digits_is_useful(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--arch", "resnet18", "--data", "digits",
                              "-o", str(tmp_path / "base.safetensors")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "base.json").read_text())
    assert summary["epochs"] == 10 and summary["steps"] == 100
    assert summary["val_accuracy"] > 80 and summary["test_accuracy"] > 80, summary
    assert "100 steps of 128 (default: at least 100 steps" in res.stderr
    assert "near chance" not in res.stderr


def test_train_warns_about_a_near_chance_model(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--arch", "resnet18", "--width", "0.25", "--data",
                              "digits", "--epochs", "0.1", "--quiet",
                              "-o", str(tmp_path / "w.safetensors")])
    assert res.exit_code == 0, res.output
    val = json.loads((tmp_path / "w.json").read_text())["val_accuracy"]
    assert near_chance(val, 10)  # one step of SGD from random weights (seed 0)
    assert f"warning: validation top-1 {val:.1f}% is near chance" in res.stderr


def test_compress_warns_about_an_untrained_baseline(tmp_path: Path) -> None:
    spec = ArchSpec("resnet18", 1, 10, "small", 0.25)
    save_weights(build_model(spec), tmp_path / "untrained.safetensors", spec)
    (tmp_path / "cfg.json").write_text(json.dumps(FAST_COMPRESS))
    res = runner.invoke(app, ["compress", "--weights", str(tmp_path / "untrained.safetensors"),
                              "--data", "digits", "--profile", "x86-avx2", "--out",
                              str(tmp_path / "out"), "--config", str(tmp_path / "cfg.json"),
                              "--max-accuracy-drop", "100", "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["baseline"]["val_accuracy"] < 15
    assert len(report["warnings"]) == 1 and "within 5 points of chance" in report["warnings"][0]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert lines == [f"warning: {report['warnings'][0]}"]


def test_a_trained_baseline_has_no_warnings() -> None:
    stats = ModelStats(accuracy=97.0, val_accuracy=96.5, latency_ms=1.0, latency_p90_ms=1.2,
                       size_bytes=1000, params=10, macs=10)
    assert baseline_warnings(stats, 10) == []
    stats.val_accuracy = 11.0
    assert "11.0%" in baseline_warnings(stats, 10)[0]
