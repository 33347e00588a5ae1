"""Techniques: config -> handler registry, the controller picking up a technique it does
not know, the pipeline config's JSON, and INT4 weight-only on a MatMul-heavy model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hadmc_core import techniques
from hadmc_core.compress import compress
from hadmc_core.config import (
    DistillConfig,
    FuseConfig,
    Int4Config,
    PipelineConfig,
    PruneConfig,
    QuantizeConfig,
    TechniqueConfig,
)
from hadmc_core.context import Variant
from hadmc_core.errors import ConfigError
from hadmc_core.hal import load_profile
from hadmc_core.onnx_io import export_onnx
from hadmc_core.techniques.int4 import gemm_to_matmul
from tests.hadmc_core.nets import FAST, ConvNet, mlp, trained

CALLS: list[str] = []


@dataclass
class ScaleHeadConfig(TechniqueConfig):
    """A technique the controller has never heard of (module phase, a plain function)."""

    key: ClassVar[str] = "scale_head_test"
    factor: float = 1.0


@techniques.register(ScaleHeadConfig)
def scale_head(ctx, cfg, work):  # type: ignore[no-untyped-def]
    CALLS.append(work.cid)
    with torch.no_grad():
        work.module.classifier.weight.mul_(cfg.factor)


@dataclass
class CopyGraphConfig(TechniqueConfig):
    key: ClassVar[str] = "copy_graph_test"


@techniques.register(CopyGraphConfig)
class CopyGraph(techniques.Technique):
    """A graph-phase technique: offers one variant, a byte copy of the current graph."""

    phase = "graph"
    order = 90

    def variants(self, ctx, cfg, work, current) -> Iterator[Variant]:  # type: ignore[no-untyped-def]
        path = ctx.work / f"{work.cid}-copy.onnx"
        shutil.copyfile(current.path, path)
        ctx.stages.add_ran("copy_graph_test")
        yield Variant("copy", path, current.higher_precision_layers, current.precisions,
                      current.info)


def test_handlers_are_found_by_config_type_and_run_in_pipeline_order():
    names = [type(h).__name__ for h, _ in techniques.ordered(
        [Int4Config(), QuantizeConfig(), FuseConfig(), DistillConfig(), PruneConfig()])]
    assert names == ["Prune", "Distill", "Fuse", "Quantize", "Int4"]

    @dataclass
    class Unregistered(TechniqueConfig):
        key: ClassVar[str] = "unregistered"

    with pytest.raises(ConfigError, match="no handler is registered for Unregistered"):
        techniques.handler_for(Unregistered())


def test_stored_job_configs_read_unchanged_and_registered_techniques_round_trip():
    stored = {"prune": {"min_keep": 0.2}, "distill": {"enabled": False},
              "quantize": {"keep_ladder": [0]}, "constraints": {"max_accuracy_drop": 2},
              "max_candidates": 2, "seed": 0, "version": 1}
    cfg = PipelineConfig.from_dict(stored)
    assert cfg.prune.min_keep == 0.2 and not cfg.distill.enabled and cfg.int4.enabled
    assert cfg.extra == []
    with_extra = PipelineConfig.from_dict({**stored, "scale_head_test": {"factor": 2.0}})
    assert with_extra.extra == [ScaleHeadConfig(factor=2.0)]
    assert with_extra.to_dict()["scale_head_test"] == {"enabled": True, "factor": 2.0}
    assert PipelineConfig.from_dict(json.loads(with_extra.to_json())) == with_extra
    with pytest.raises(ConfigError, match="unknown key.*no_such_technique"):
        PipelineConfig.from_dict({"no_such_technique": {}})
    with pytest.raises(ConfigError, match="ScaleHeadConfig: unknown option"):
        PipelineConfig.from_dict({"scale_head_test": {"nope": 1}})


def test_controller_runs_a_registered_technique_it_was_not_changed_for(digits, tmp_path):
    model = trained(ConvNet(), digits, epochs=3)
    cfg = PipelineConfig.from_dict({**FAST, "prune": {"enabled": False},
                                    "quantize": {"keep_ladder": [0], "calib_samples": 64,
                                                 "sensitivity_samples": 32},
                                    "scale_head_test": {"factor": 1.5},
                                    "copy_graph_test": {}})
    CALLS.clear()
    res = compress(model, digits, load_profile("x86-avx2"), tmp_path / "out", cfg)
    rep = res.report
    assert CALLS == ["c0"]
    assert {"scale_head_test", "copy_graph_test"} <= set(rep["stages"]["ran"])
    assert [c["id"] for c in rep["candidates"]] == ["c0-q0", "c0-q0-copy"]
    assert rep["config"]["scale_head_test"] == {"enabled": True, "factor": 1.5}
    # The scaled head really is in the artifact: logits are 1.5x the original's.
    x = digits.val.x[:4]
    sess = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95
    assert np.abs(got).mean() == pytest.approx(1.5 * np.abs(want).mean(), rel=0.15)
    assert any(s["stage"] == "prune" and s["reason"] == "switched off in the config"
               for s in rep["stages"]["skipped"])


def test_gemm_rewritten_as_matmul_computes_the_same(tmp_path, digits):
    path = export_onnx(mlp().eval(), torch.from_numpy(digits.val.x[:2]), tmp_path / "m.onnx")
    gemms = ["/1/Gemm", "/3/Gemm", "/5/Gemm"]
    made = gemm_to_matmul(path, tmp_path / "mm.onnx", gemms)
    assert made["/1/Gemm"] == ["/1/Gemm", "/1/Gemm_bias"]
    runs = []
    for p in (path, tmp_path / "mm.onnx"):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        runs.append(sess.run(None, {"input": digits.val.x[:8]})[0])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5, atol=1e-5)


def test_int4_weight_only_on_a_matmul_heavy_model(digits, tmp_path):
    model = trained(mlp(), digits)
    cfg = PipelineConfig.from_dict({**FAST, "prune": {"enabled": False},
                                    "distill": {"enabled": False},
                                    "quantize": {"keep_ladder": [0], "calib_samples": 64,
                                                 "sensitivity_samples": 32},
                                    "constraints": {"max_accuracy_drop": 3.0}})
    rep = compress(model, digits, load_profile("x86-avx2"), tmp_path / "out", cfg).report
    int4 = rep["int4_weight_only"]
    assert int4["matmul_weight_fraction"] > 0.9 and int4["nodes"] == 3
    (tried,) = int4["tried"]
    assert tried["id"] == "c0-q0-int4" and tried["built_from"] == "c0-q0"
    int8 = next(c for c in rep["candidates"] if c["id"] == "c0-q0")
    four = next(c for c in rep["candidates"] if c["id"] == "c0-q0-int4")
    # INT4 halves what INT8 stored for the weights (50k parameters: about 25 kB less).
    assert tried["bytes_saved"] == int8["size_bytes"] - four["size_bytes"] > 20_000
    assert "int4" in rep["stages"]["ran"]
    if int4["applied"]:
        rows = {r["layer"]: r for r in rep["layers"]}
        assert {rows[k]["precision"] for k in ("1", "3", "5")} == {"int4"}
        assert rows["1"]["executed_as"] == "int4 weights, fp32 compute"
        import onnx

        ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
        assert "MatMulNBits" in ops
    else:
        assert int4["reason"].startswith("tried")
