"""Grouped (non-depthwise) convolutions keep whole groups when pruned: from a PyTorch
module, and from an ONNX file through ``hadmc compress``; an unexpected failure inside
compression is one error line from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hadmc_core import prune
from hadmc_core.cli import _register, app
from hadmc_core.config import PruneConfig
from tests.hadmc_core.factory_grouped import GroupedNet

_register()
runner = CliRunner()
FACTORY = "tests.hadmc_core.factory_grouped"
#: ``uniform_ratio`` makes the search keep 8 of the 16 channels of each grouped set.
FAST = {"prune": {"ladder": [0.5], "calib_batches": 2, "uniform_ratio": 0.3},
        "distill": {"epochs": 1, "samples": 256, "batch_size": 64},
        "quantize": {"keep_ladder": [0], "calib_samples": 64, "sensitivity_samples": 32},
        "measure": {"runs": 5, "warmup": 2, "in_graph": True}, "max_candidates": 1}


@pytest.mark.parametrize("keep", [10, 8, 5])
def test_grouped_convolution_is_pruned_at_the_same_positions_in_every_group(keep, digits):
    torch.manual_seed(0)
    model = GroupedNet().eval()
    example = torch.from_numpy(digits.val.x[:2])
    groups, _ = prune.analyze(model, digits.train, PruneConfig(calib_batches=2), example)
    by_root = {g.root: g for g in groups}
    assert by_root["conv1"].ch_groups == by_root["conv2"].ch_groups == 4
    assert by_root["conv3"].ch_groups == 1
    assert all(a <= b for g in groups for a, b in zip(g.scores, g.scores[1:], strict=False))
    pruned = prune.apply(model, groups, {"conv1": keep, "conv2": 16, "conv3": 24}, example)
    kept = by_root["conv1"].keepable(keep)
    assert kept == keep // 4 * 4 and pruned.conv2.groups == 4
    assert pruned.conv1.out_channels == pruned.conv2.in_channels == kept
    # the same positions go in every group of 4 input channels of conv2
    removed = sorted(by_root["conv1"].order[:16 - kept])
    assert len({tuple(i % 4 for i in removed if i // 4 == grp) for grp in range(4)}) == 1
    stay = [i for i in range(16) if i not in removed]
    assert torch.equal(pruned.conv1.weight, model.conv1.weight[stay])
    assert torch.equal(pruned.conv2.weight, model.conv2.weight[:, [i for i in stay if i < 4]])
    out = pruned(torch.from_numpy(digits.test.x[:5]))
    assert out.shape == (5, 10) and torch.isfinite(out).all()


def test_grouped_output_channels_are_pruned_per_group(digits):
    torch.manual_seed(0)
    model = GroupedNet().eval()
    example = torch.from_numpy(digits.val.x[:2])
    groups, _ = prune.analyze(model, digits.train, PruneConfig(calib_batches=2), example)
    pruned = prune.apply(model, groups, {"conv2": 9}, example)
    assert pruned.conv2.out_channels == pruned.conv3.in_channels == 8
    assert pruned.conv2.weight.shape == (8, 4, 3, 3) and pruned.conv2.groups == 4
    assert pruned(example).shape == (2, 10)


def _export(model: torch.nn.Module, path: Path) -> Path:
    torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    return path


def _compress(tmp_path: Path, *model: str) -> tuple[int, str]:
    (tmp_path / "fast.json").write_text(json.dumps(FAST))
    res = runner.invoke(app, ["compress", *model, "--data", "digits", "--profile", "local",
                              "--config", str(tmp_path / "fast.json"), "--max-accuracy-drop",
                              "100", "--out", str(tmp_path / "out"), "--quiet"])
    return res.exit_code, res.output


def test_grouped_convolutions_from_onnx_compress_through_the_cli(digits, tmp_path):
    """The latency fit prunes at uniform widths and the search at its own: both keep groups."""
    from hadmc_core.train import TrainConfig, fit

    torch.manual_seed(0)
    model = GroupedNet()
    fit(model, digits.train, TrainConfig(epochs=2, batch_size=64, lr=0.05))
    onnx = _export(model, tmp_path / "grouped.onnx")
    code, output = _compress(tmp_path, "--model", str(onnx))
    assert code == 0, output
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["model"]["kind"] == "onnx" and "prune" in rep["stages"]["ran"]
    assert rep["compressed"]["params"] < rep["baseline"]["params"]
    # both 16-channel sets (into and out of the grouped convolution) kept 8: 2 of 4 per group
    assert sorted(r["out_channels"] for r in rep["layers"]
                  if r["original_out_channels"] == 16) == [8, 8]


def test_an_unexpected_failure_inside_compression_is_one_line_exit_2(tmp_path):
    code, output = _compress(tmp_path, "--model", f"{FACTORY}:fails_in_training",
                             "--input-shape", "1,8,8")
    assert code == 2, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output
    text = " ".join(output.split())
    assert text.startswith("error: compression failed in ")
    assert "RuntimeError: shape mismatch in a user layer" in text
    log = Path(text.rsplit("traceback in ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text()
    log.unlink()
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
