"""Each search strategy end to end on digits (a small untrained model, few candidates, no
distillation, a remote profile so the latency model is the roofline): the pipeline prunes
with the strategy's plan, and when the strategy chose precisions the quantize technique's
first variant keeps exactly the plan's FP32 layers."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from hadmc_core import search
from hadmc_core.cli import _register, app
from hadmc_core.compress import compress
from hadmc_core.config import PipelineConfig
from hadmc_core.hal import load_profile
from hadmc_core.models import ArchSpec, build_model
from hadmc_core.techniques import prune as prune_technique

_register()
real_run = search.run


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    spec = ArchSpec("resnet18", 1, 10, "small", width=0.25)
    return build_model(spec).eval(), spec


@pytest.mark.slow
@pytest.mark.parametrize("name", ["greedy", "evolution", "rl"])
def test_compress_with_each_strategy(name, small_model, digits, tmp_path, monkeypatch):
    model, spec = small_model
    plans: list[search.Plan] = []

    def recording_run(*args, **kwargs):
        plan = real_run(*args, **kwargs)
        if plan.precisions is not None and "fp32" not in plan.precisions.values():
            plan.precisions[next(iter(plan.precisions))] = "fp32"  # a plan worth checking
        plans.append(plan)
        return plan

    monkeypatch.setattr(prune_technique.search, "run", recording_run)
    cfg = PipelineConfig.from_dict({
        "prune": {"search": name, "search_trials": 8, "calib_batches": 1, "batch_size": 32,
                  "ladder": [0.5]},
        "distill": {"enabled": False},
        "quantize": {"keep_ladder": [0], "sensitivity_samples": 32, "calib_samples": 32},
        "measure": {"runs": 5, "warmup": 1, "in_graph": False}, "max_candidates": 1,
        "constraints": {"max_accuracy_drop": 100.0}})
    res = compress(model, digits, load_profile("arm64-generic"), tmp_path / "out", cfg,
                   spec=spec)
    rep = res.report
    assert rep["config"]["prune"]["search"] == name
    assert "prune" in rep["stages"]["ran"] and "quantize" in rep["stages"]["ran"]
    assert rep["compressed"]["params"] < rep["baseline"]["params"]
    if name == "greedy":
        assert plans == []  # today's allocation, precisions left to the quantize technique
        return
    assert len(plans) == 1 and plans[0].strategy == name and 1 <= plans[0].evaluated <= 8
    assert plans[0].precisions is not None
    planned = {n for n, p in plans[0].precisions.items() if p == "fp32"}
    assert [c["id"] for c in rep["candidates"]] == [f"c0-q{len(planned)}"]
    assert {d["layer"] for d in rep["layers"] if d["precision"] == "fp32"} == planned


def test_cli_search_option_refuses_an_unknown_strategy(tmp_path):
    res = CliRunner().invoke(app, ["compress", "--model", "resnet18", "--data", "digits",
                                   "--out", str(tmp_path / "o"), "--search", "annealing"])
    assert res.exit_code == 2
    assert "prune.search: one of evolution, greedy, rl, not 'annealing'" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()
