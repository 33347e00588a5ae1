"""The ladder's unpruned rung: measured after the pruned rungs, outside ``max_candidates``,
so a run whose pruned candidates miss the accuracy limit returns the unpruned model's INT8
(what plain post-training quantization gives), or its FP32 export when every INT8 variant
misses too, never a candidate over the limit."""

from __future__ import annotations

import pytest

from hadmc_core.backends.onnxruntime import OnnxRuntimeBackend
from hadmc_core.compress import compress
from hadmc_core.config import PipelineConfig
from hadmc_core.hal import load_profile
from tests.hadmc_core.nets import FAST, ConvNet, trained

#: The first rung keeps a tenth of the removable latency and nothing recovers it (no
#: distillation): its candidates are far over a 5-point limit on digits.
HARSH = {**FAST, "prune": {"ladder": [0.1, 1.0], "calib_batches": 2},
         "distill": {"enabled": False}, "int4": {"enabled": False},
         "max_candidates": 1, "constraints": {"max_accuracy_drop": 5.0}}


@pytest.fixture(scope="module")
def convnet(digits):
    return trained(ConvNet(), digits, epochs=3)


def _by_rung(rep):
    cands = rep["candidates"]
    return ([c for c in cands if c["latency_fraction"] < 1.0],
            [c for c in cands if c["latency_fraction"] >= 1.0])


def test_pruning_over_the_limit_falls_back_to_the_unpruned_int8(convnet, digits, tmp_path):
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "o",
                   PipelineConfig.from_dict(HARSH)).report
    pruned, unpruned = _by_rung(rep)
    assert pruned and all(c["val_drop_upper"] > 5.0 for c in pruned), pruned
    chosen = next(c for c in rep["candidates"] if c["chosen"])
    assert rep["constraints"]["met"], rep["constraints"]["message"]
    assert chosen in unpruned and chosen["val_drop_upper"] <= 5.0
    assert chosen["id"].endswith("-q0")  # the whole unpruned model in INT8
    assert {r["precision"] for r in rep["layers"]} == {"int8"}
    assert all(r["out_channels"] == r["original_out_channels"] for r in rep["layers"])


def test_every_int8_variant_over_the_limit_gives_the_fp32_export(convnet, digits, tmp_path,
                                                                 monkeypatch):
    real = OnnxRuntimeBackend.quantize_int8

    def broken(self, fp32_path, out_path, calib_x, **kw):  # type: ignore[no-untyped-def]
        # activation ranges calibrated on near-zero inputs: every real input saturates
        return real(self, fp32_path, out_path, calib_x * 1e-4, **kw)

    monkeypatch.setattr(OnnxRuntimeBackend, "quantize_int8", broken)
    cfg = {**HARSH, "quantize": {**HARSH["quantize"], "keep_ladder": [0]}}
    rep = compress(convnet, digits, load_profile("x86-avx2"), tmp_path / "o",
                   PipelineConfig.from_dict(cfg)).report
    _pruned, unpruned = _by_rung(rep)
    chosen = next(c for c in rep["candidates"] if c["chosen"])
    assert any(c["id"].endswith("-q0") and c["val_drop_upper"] > 5.0 for c in unpruned)
    assert rep["constraints"]["met"] and chosen["id"].endswith("-fp32") and chosen in unpruned
    assert any("unpruned FP32 export" in w for w in rep["warnings"])

