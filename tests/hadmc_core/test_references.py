"""A job measures what a user would run instead (FP32 on each runtime, NNCF PTQ INT8 on
OpenVINO) beside the chosen model, on this machine only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from hadmc_core.compress import compress
from hadmc_core.config import PipelineConfig
from hadmc_core.hal import load_profile
from hadmc_core.models import save_weights
from tests.hadmc_core.nets import FAST, ConvNet, trained

QUICK = {**FAST, "prune": {"enabled": False},
         "quantize": {"keep_ladder": [0], "calib_samples": 64, "sensitivity_samples": 32}}


@pytest.fixture(scope="module")
def convnet(digits):  # type: ignore[no-untyped-def]
    return trained(ConvNet(), digits, epochs=3)


def test_references_are_measured_beside_the_chosen_model(convnet, digits, tmp_path) -> None:
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "out",
                   PipelineConfig.from_dict(QUICK)).report
    refs = rep["references"]
    assert refs["chosen"]["runtime"] == rep["backend"]
    assert refs["chosen"]["accuracy"] == pytest.approx(rep["compressed"]["accuracy"], abs=1e-3)
    rows = {r["name"]: r for r in refs["rows"]}
    assert set(rows) == {"onnxruntime-fp32", "openvino-fp32", "openvino-nncf-int8"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["latency_ms"] > 0
        assert r["chosen_speedup"] == pytest.approx(
            r["latency_ms"] / refs["chosen"]["latency_ms"], rel=1e-2)
        assert r["accuracy_minus_chosen"] == pytest.approx(
            r["accuracy"] - refs["chosen"]["accuracy"], abs=1e-2)
    # The FP32 graph scores the same on both runtimes, and as the job's baseline did.
    assert rows["onnxruntime-fp32"]["accuracy"] == pytest.approx(rep["baseline"]["accuracy"],
                                                                 abs=0.1)
    assert rows["openvino-fp32"]["accuracy"] == pytest.approx(rep["baseline"]["accuracy"],
                                                              abs=0.5)
    # NNCF's INT8 really is INT8 on OpenVINO, and scores near the FP32 graph on digits.
    assert "nncf.quantize" in rows["openvino-nncf-int8"]["work"]
    assert abs(rows["openvino-nncf-int8"]["accuracy"] - rep["baseline"]["accuracy"]) < 5
    fastest = min(refs["rows"], key=lambda r: r["latency_ms"])
    assert refs["fastest"] == fastest["name"]
    assert refs["speedup_vs_fastest"] == fastest["chosen_speedup"]
    assert "references" in rep["stages_seconds"]


def test_references_are_not_measured_for_another_device(convnet, digits, tmp_path) -> None:
    rep = compress(convnet, digits, load_profile("jetson-orin"), tmp_path / "out",
                   PipelineConfig.from_dict(QUICK)).report
    assert rep["latency_source"] == "estimated"
    assert "not this machine" in rep["references"]["skipped"]
    assert "rows" not in rep["references"]


def test_references_can_be_switched_off_and_the_cli_prints_them(convnet, digits,
                                                                  tmp_path) -> None:
    off = {**QUICK, "measure": {**QUICK["measure"], "references": False}}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "off",
                   PipelineConfig.from_dict(off)).report
    assert "switched off" in rep["references"]["skipped"]

    from hadmc_core.cli import _register, app

    _register()
    weights = tmp_path / "w.safetensors"
    save_weights(convnet, weights)
    (tmp_path / "cfg.json").write_text(json.dumps(QUICK))
    res = CliRunner().invoke(app, [
        "compress", "--model", "tests.hadmc_core.nets:ConvNet", "--input-shape", "1,8,8",
        "--weights", str(weights), "--data", "digits", "--profile", "x86-avx2",
        "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "cli")])
    assert res.exit_code in (0, 3), res.output  # 3: written, a constraint not met
    assert "vs NNCF PTQ INT8 on OpenVINO" in res.output
    assert np.isfinite(json.loads((tmp_path / "cli" / "report.json").read_text())
                       ["references"]["speedup_vs_fastest"])
