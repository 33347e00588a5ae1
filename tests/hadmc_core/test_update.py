"""Update-aware recompression on digits: a fine-tuned base compressed within the deployed
version's plan keeps its channels, INT8 layers and scales, and its delta is small."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from typer.testing import CliRunner

from hadmc_core.cli import _register, app
from hadmc_core.compress import compress
from hadmc_core.config import PipelineConfig
from hadmc_core.delta import diff
from hadmc_core.hal import load_profile
from hadmc_core.plan import PlanError, load_plan
from tests.hadmc_core.nets import FAST, ConvNet, mlp, trained

_register()
#: FAST with its lax accuracy limit, so that v1 is INT8 (the path under test)
CFG = FAST


def _finetune(model: torch.nn.Module, data, samples: int, lr: float) -> torch.nn.Module:
    """All layers, SGD, low learning rate (the delta benchmark's third scenario)."""
    m = copy.deepcopy(model).train()
    opt = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
    idx = np.random.default_rng(3).permutation(len(data.train))[:samples]
    for i in range(0, samples, 64):
        x = torch.from_numpy(data.train.x[idx[i:i + 64]])
        y = torch.from_numpy(data.train.y[idx[i:i + 64]])
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def versions(digits, tmp_path_factory):
    """(v1 dir, v2 dir, v2's result, the fine-tuned module): a small CNN compressed, its
    base fine-tuned, and compressed again within v1's plan."""
    base = trained(ConvNet(), digits)
    root = tmp_path_factory.mktemp("update")
    cfg = PipelineConfig.from_dict(CFG)
    prof = load_profile("x86-avx2")
    compress(base, digits, prof, root / "v1", cfg)
    tuned = _finetune(base, digits, 512, 0.002)
    res = compress(tuned, digits, prof, root / "v2", cfg, update_of=root / "v1")
    return root / "v1", root / "v2", res, tuned


def _inits(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_the_plan_is_reused_on_the_artifacts(versions):
    v1, v2, res, _ = versions
    r1 = json.loads((v1 / "report.json").read_text())
    r2 = json.loads((v2 / "report.json").read_text())
    assert r2["update"]["met_within_plan"] is True, r2["constraints"]
    assert r2["update"]["structure"] == "reused"
    kept1 = {d["layer"]: d["kept_out_channels"] for d in r1["layers"]}
    kept2 = {d["layer"]: d["kept_out_channels"] for d in r2["layers"]}
    assert kept1 == kept2 and all(v is not None for v in kept1.values())
    assert any(len(v) < d["original_out_channels"] for d, v in
               zip(r1["layers"], kept1.values(), strict=True)), "v1 was pruned"
    prec1 = {d["layer"]: d["precision"] for d in r1["layers"]}
    assert prec1 == {d["layer"]: d["precision"] for d in r2["layers"]}
    a, b = _inits(v1 / "model.onnx"), _inits(v2 / "model.onnx")
    assert {k: (v.dtype, v.shape) for k, v in a.items()} == \
        {k: (v.dtype, v.shape) for k, v in b.items()}
    if r2["update"]["quantization"] == "deployed scales and zero points":
        scales = [k for k in a if k.endswith(("_scale", "_zero_point"))]
        assert scales and all(np.array_equal(a[k], b[k]) for k in scales)
    # the weights did change: v2 is not v1 copied
    assert any(not np.array_equal(a[k], b[k]) for k in a if k.endswith("_quantized"))


def test_the_update_delta_is_under_a_tenth_of_the_file(versions):
    v1, v2, _res, _ = versions
    data, stats = diff(v1 / "model.onnx", v2 / "model.onnx")
    size = (v2 / "model.onnx").stat().st_size
    assert len(data) <= 0.10 * size, (len(data), size, stats.ops)


def test_recorded_kept_channels_are_the_channels_pruning_kept(versions, digits):
    """Every layer records its kept channels: as many as it has, sorted, distinct."""
    v1, _v2, _res, _ = versions
    plan = load_plan(v1)
    for name, ly in plan.layers.items():
        assert ly.kept_out_channels is not None
        assert len(ly.kept_out_channels) == ly.out_channels, name
        assert ly.kept_out_channels == sorted(set(ly.kept_out_channels))


def test_a_plan_of_another_architecture_is_refused(versions, digits, tmp_path):
    v1, _v2, _res, _ = versions
    with pytest.raises(PlanError, match="another architecture"):
        compress(mlp(), digits, load_profile("x86-avx2"), tmp_path / "o",
                 PipelineConfig.from_dict(CFG), update_of=v1)
    assert not (tmp_path / "o").exists()


def test_a_report_without_kept_channels_is_refused(versions, tmp_path):
    v1, _v2, _res, _ = versions
    rep = json.loads((v1 / "report.json").read_text())
    for d in rep["layers"]:
        d.pop("kept_out_channels")
    (tmp_path / "report.json").write_text(json.dumps(rep))
    (tmp_path / "model.onnx").write_bytes((v1 / "model.onnx").read_bytes())
    with pytest.raises(PlanError, match="does not record which channels"):
        load_plan(tmp_path)


def test_cli_update_of_errors(tmp_path):
    from hadmc_core.models import ArchSpec, build_model, save_weights

    spec = ArchSpec("resnet18", 1, 10, "small", width=0.25)
    save_weights(build_model(spec), tmp_path / "w.safetensors", spec)
    runner = CliRunner()
    args = ["compress", "--weights", str(tmp_path / "w.safetensors"), "--data", "digits",
            "--profile", "x86-avx2", "--quiet", "--out", str(tmp_path / "out")]
    res = runner.invoke(app, [*args, "--update-of", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "no report.json there" in res.output
    res = runner.invoke(app, [*args, "--allow-restructure"])
    assert res.exit_code == 2 and "--allow-restructure needs --update-of" in res.output
    assert not (tmp_path / "out").exists()
