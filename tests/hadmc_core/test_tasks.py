"""Tasks: head and alignment points found from the graph, output checks, metric, and a
plain nn.Module (no zoo, no feature_stages, head not named fc) compressed end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from hadmc_core import tasks
from hadmc_core.compress import compress
from hadmc_core.config import PipelineConfig
from hadmc_core.data import DataSplits, Split
from hadmc_core.errors import HadmcError, UnknownNameError
from hadmc_core.hal import load_profile
from hadmc_core.hal.latency import runs_here
from hadmc_core.models import ArchSpec, build_model
from tests.hadmc_core.nets import FAST, ConvNet, trained

TASK = tasks.get("classification")
EXAMPLE = torch.zeros(2, 1, 8, 8)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 8, 3, padding=1)
        self.scores = nn.Linear(8, 5)
        self.norm = nn.LayerNorm(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)
        if float(y.sum()) > 1e9:
            y = -y
        return self.norm(self.scores(y.mean((2, 3))))


def test_classification_is_registered_and_unknown_names_are_listed():
    assert "classification" in tasks.names()
    assert TASK.metric_name == "top1"
    with pytest.raises(UnknownNameError, match="unknown task 'segmentation'.*classification"):
        tasks.get("segmentation")


@pytest.mark.parametrize("model,head", [
    (ConvNet(), "classifier"),
    (build_model(ArchSpec("resnet18", 1, 10, "small", 0.25)), "fc"),
    (build_model(ArchSpec("mobilenetv2", 1, 10, "small", 0.25)), "classifier.1"),
    (Untraceable(), "scores"),
], ids=["1x1-conv-head", "resnet18", "mobilenetv2", "untraceable-norm-after-head"])
def test_head_is_the_last_weight_layer_before_the_output(model, head):
    assert TASK.head(model, EXAMPLE) == head


def test_feature_points_are_stage_ends_at_the_last_resolutions():
    net = ConvNet()
    # body.2 ends the 8x8 stage, body the 4x4 one; the head's map and the pooled 1x1
    # vector are not points.
    assert TASK.feature_points(net, EXAMPLE, 2) == ["body.2", "body"]
    assert TASK.feature_points(net, EXAMPLE, 1) == ["body"]
    assert TASK.feature_points(net, EXAMPLE, 0) == []
    resnet = build_model(ArchSpec("resnet18", 1, 10, "small", 0.25))
    assert TASK.feature_points(resnet, torch.zeros(2, 1, 28, 28), 2) == ["layer3", "layer4"]


def _splits(classes: int, top_label: int) -> DataSplits:
    x = np.zeros((12, 1, 8, 8), np.float32)
    y = np.arange(12) % (top_label + 1)
    s = Split(x, y)
    return DataSplits("tiny", s, s, s, classes)


def test_output_width_that_does_not_fit_the_labels_is_one_clear_error():
    TASK.check_model((2, 10), _splits(10, 9))
    with pytest.raises(HadmcError, match="labels go up to 9 but the model has 5 classes"):
        TASK.check_model((2, 5), _splits(10, 9))
    with pytest.raises(HadmcError, match=r"must output \(batch, classes\).*\(2, 10, 4, 4\)"):
        TASK.check_model((2, 10, 4, 4), _splits(10, 9))


def test_top1_metric_on_runtime_outputs():
    split = Split(np.zeros((4, 1, 8, 8), np.float32), np.array([0, 1, 2, 1]))
    logits = np.eye(3, dtype=np.float32)[[0, 1, 2, 2]]
    assert TASK.metric([logits], split) == pytest.approx(75.0)


def test_loss_is_cross_entropy():
    out, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    assert float(TASK.loss(out, y)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(out, y)))


@pytest.fixture(scope="module")
def convnet_report(digits, tmp_path_factory):
    model = trained(ConvNet(), digits)
    out = tmp_path_factory.mktemp("plain") / "out"
    res = compress(model, digits, load_profile("x86-avx2"), out, PipelineConfig.from_dict(FAST),
                   example_input=torch.from_numpy(digits.val.x[:2]))
    return res, out


def test_plain_module_compresses_end_to_end_with_alignment_points(convnet_report, digits):
    res, out = convnet_report
    rep = json.loads((out / "report.json").read_text())
    assert rep == json.loads(json.dumps(res.report))
    assert rep["model"] == {"kind": "module", "name": "ConvNet",
                            "class": "tests.hadmc_core.nets.ConvNet"}
    assert rep["arch"] is None and rep["task"] == "classification" and rep["metric"] == "top1"
    # Distillation aligned the points found in the graph, not declared stages.
    assert rep["distill_alignment"] == ["body.2", "body"]
    assert rep["distill_alignment_source"] == "graph"
    assert {"prune", "distill", "fuse", "quantize"} <= set(rep["stages"]["ran"])
    assert rep["compressed"]["params"] < rep["baseline"]["params"]
    # The head (a 1x1 convolution) keeps one output per class and takes what the last body
    # convolution kept (which layers lose channels follows the latency measured here).
    rows = {row["layer"]: row for row in rep["layers"]}
    head = rows["classifier"]
    assert head["out_channels"] == head["original_out_channels"] == 10
    assert head["in_channels"] == rows["body.6"]["out_channels"]
    assert any(r["out_channels"] < r["original_out_channels"] for r in rows.values())
    assert rep["latency_source"] == ("measured" if runs_here(load_profile("x86-avx2"))
                                     else "estimated")
    # A conv net holds almost no MatMul weights: INT4 is not tried, and the report says why.
    int4 = rep["int4_weight_only"]
    assert int4["applied"] is False and int4["matmul_weight_fraction"] == 0.0
    assert "0.0% of the parameter bytes" in int4["reason"]
    assert {"stage": "int4", "reason": int4["reason"], "op": None, "node": None} \
        in rep["stages"]["skipped"]
    assert (out / "model.onnx").stat().st_size == rep["compressed"]["size_bytes"]
