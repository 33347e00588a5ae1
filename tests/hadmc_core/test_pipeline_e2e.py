"""End to end on digits: CLI in, ONNX + report out, report checked independently.

The run must meet the accuracy limit it asks for, decided by the paired upper bound on
the validation split (digits' 269 images topped up to 361 from training, the size the
3-point limit asks for, where a typical candidate's margin is half the limit), so the
ladder ends on a mild rung. How long it takes is
measured in bench/, not asserted here.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from hadmc_core.cli import _register, app
from hadmc_core.config import PipelineConfig
from hadmc_core.data import with_validation

_register()
runner = CliRunner()


LIMIT = 3.0


@pytest.fixture(scope="module")
def compressed(trained_digits_resnet, tmp_path_factory):
    _model, _spec, weights = trained_digits_resnet
    root = tmp_path_factory.mktemp("e2e")
    cfg = PipelineConfig.from_dict({
        "prune": {"ladder": [0.3, 0.65]},
        "distill": {"epochs": 4, "samples": None, "batch_size": 64},
        "quantize": {"keep_ladder": [0, 2]}, "max_candidates": 2,
    })
    (root / "cfg.json").write_text(cfg.to_json())
    res = runner.invoke(app, ["compress", "--weights", str(weights), "--data", "digits",
                              "--profile", "x86-avx2", "--out", str(root / "out"),
                              "--config", str(root / "cfg.json"),
                              "--max-accuracy-drop", str(LIMIT), "--quiet"])
    return res, root / "out"


def test_compress_cli_meets_its_constraint_with_all_outputs(compressed):
    res, out = compressed
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"model.onnx", "report.json", "report.png"}
    assert not list(out.parent.glob(".out.tmp-*")), "no temporary directory left behind"


def test_report_matches_an_independent_evaluation(compressed, digits):
    _res, out = compressed
    rep = json.loads((out / "report.json").read_text())
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: digits.test.x})[0]
    acc = 100.0 * float((logits.argmax(1) == digits.test.y).mean())
    assert rep["compressed"]["accuracy"] == pytest.approx(acc, abs=1e-9)
    assert rep["compressed"]["size_bytes"] == (out / "model.onnx").stat().st_size
    for key in ("accuracy", "latency_ms", "size_bytes", "params", "macs"):
        assert key in rep["baseline"] and key in rep["compressed"]
    assert rep["compressed"]["params"] < rep["baseline"]["params"]
    assert rep["compressed"]["size_bytes"] < rep["baseline"]["size_bytes"] / 4
    assert rep["latency_model"] == "measured-onnxruntime-in-graph"
    assert rep["latency_source"] == "measured" and rep["backend"] == "onnxruntime"
    assert rep["model"]["kind"] == "zoo" and rep["arch"]["arch"] == "resnet18"
    # The zoo model declares its stages; distillation aligned the last two.
    assert rep["distill_alignment"] == ["layer3", "layer4"]
    assert rep["distill_alignment_source"] == "feature_stages"
    assert {"prune", "distill", "fuse", "quantize"} <= set(rep["stages"]["ran"])
    assert [s["stage"] for s in rep["stages"]["skipped"]] == ["int4"]
    assert {layer["executed_as"] for layer in rep["layers"]} <= {"int8", "fp32"}
    assert rep["fusion"]["fused_conv_bn"] > 0 and rep["fusion"]["max_abs_diff"] < 1e-4
    chosen = [c for c in rep["candidates"] if c["chosen"]]
    assert len(chosen) == 1
    precisions = {layer["precision"] for layer in rep["layers"]}
    assert "int8" in precisions
    assert set(rep["stages_seconds"]) >= {"baseline", "sensitivity", "latency", "prune", "distill",
                                          "fuse", "quantize", "measure"}
    assert rep["versions"]["onnxruntime"] == ort.__version__
    assert rep["constraints"]["met"], rep["constraints"]["message"]
    assert PipelineConfig.from_dict(rep["config"]).to_dict() == rep["config"]
    # The ONNX graph really is quantized.
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_config_round_trips_through_json():
    cfg = PipelineConfig.from_dict({"prune": {"min_keep": 0.2}, "distill": {"enabled": False}})
    again = PipelineConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.prune.min_keep == 0.2 and not again.distill.enabled


def test_report_png_is_an_image(compressed):
    _res, out = compressed
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.frombuffer((out / "report.png").read_bytes()[:8], np.uint8).size == 8


def _per_image(path, split):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: split.x})[0]
    return np.where(logits.argmax(1) == split.y, 100.0, 0.0)


def test_limit_is_met_by_the_paired_upper_bound_recomputed_here(compressed, digits,
                                                                trained_digits_resnet,
                                                                tmp_path):
    import torch

    from hadmc_core.decision import paired_mean_bound
    from hadmc_core.onnx_io import export_onnx

    _res, out = compressed
    rep = json.loads((out / "report.json").read_text())
    model = trained_digits_resnet[0].cpu().eval()
    base_onnx = export_onnx(model, torch.from_numpy(digits.val.x[:1]), tmp_path / "base.onnx")
    val = with_validation(digits, 361).val
    bound = paired_mean_bound(_per_image(base_onnx, val), _per_image(out / "model.onnx", val),
                              0.95)
    got = rep["compressed"]["val_drop"]
    assert got["method"] == "paired-normal" and got["n"] == len(val) == 361
    assert got["point"] == pytest.approx(bound.point, abs=1e-3)
    assert got["upper"] == pytest.approx(bound.upper, abs=1e-3)
    assert bound.upper <= LIMIT and bound.upper > bound.point
    assert rep["summary"]["val_accuracy_drop_upper_points"] == pytest.approx(bound.upper,
                                                                             abs=1e-3)
    # Every candidate carries its bound; the ones refused for accuracy are over the limit
    # by their bound, and the chosen one is within it.
    for c in rep["candidates"]:
        assert c["val_drop_upper"] > c["val_drop"]
        assert (c["status"] == "accuracy") == (c["val_drop_upper"] > LIMIT), c
    chosen = next(c for c in rep["candidates"] if c["chosen"])
    assert chosen["val_drop_upper"] <= LIMIT
    d = rep["decision"]
    assert d["confidence"] == 0.95 and d["validation_images"] == 361
    # At 3 points the split is topped up from training (decision.auto_validation_size).
    assert d["validation_from_training"] == 92 and "training split" in d["note"]
    assert 0 < d["smallest_margin_points"] <= d["largest_margin_points"]
    assert ("warning" in d) == (d["smallest_margin_points"] > LIMIT / 2)
    assert [r["candidate"] for r in rep["recovery"]] == sorted(
        {c["id"].split("-")[0] for c in rep["candidates"] if c["params"] <
         rep["baseline"]["params"]})
    assert all(0 < r["removed_macs_fraction"] < 1 for r in rep["recovery"])
