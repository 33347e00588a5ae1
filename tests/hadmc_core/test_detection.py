"""Detection: mAP by pycocotools, the detector trains, prunes with consistent shapes through
the PAN concatenations, exports with NMS and runs in ONNX Runtime and OpenVINO."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hadmc_core import backends, prune, tasks
from hadmc_core.config import PruneConfig
from hadmc_core.data import Split
from hadmc_core.data.detection import DetectionSplits, boxes_of, pad_targets
from hadmc_core.models.yolo import YOLO
from hadmc_core.tasks.detection import coco_map
from hadmc_core.tasks.detection_io import match_iou, read_detections
from hadmc_core.train import TrainConfig, fit_detector

SIDE = 64


def _synthetic(n: int, seed: int = 0) -> Split:
    """Bright squares on black, one or two an image, class = size bucket."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3, SIDE, SIDE), np.float32)
    tables = []
    for i in range(n):
        rows = []
        for _ in range(int(rng.integers(1, 3))):
            cls = int(rng.integers(0, 2))
            s = 12 if cls == 0 else 24
            px, py = (int(v) for v in rng.integers(0, SIDE - s, 2))
            x[i, :, py:py + s, px:px + s] = 1.0
            rows.append([cls, px, py, px + s, py + s])
        tables.append(np.asarray(rows, np.float32))
    return Split(x, pad_targets(tables))


@pytest.fixture(scope="module")
def data() -> DetectionSplits:
    return DetectionSplits("squares", _synthetic(32, 0), _synthetic(12, 1), _synthetic(12, 2),
                           2, class_names=["small", "large"])


@pytest.fixture(scope="module")
def trained(data) -> YOLO:
    torch.manual_seed(0)
    model = YOLO(3, 2, width=0.25)
    before = [p.detach().clone() for p in model.parameters()]
    losses = fit_detector(model, data.train, TrainConfig(epochs=1, batch_size=16, lr=0.01))
    assert np.isfinite(losses).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    return model.eval()


def _perfect(split: Split) -> list[np.ndarray]:
    out = []
    for y in split.y:
        cls, boxes = boxes_of(y)
        out.append(np.concatenate([boxes, np.ones((len(cls), 1)), cls[:, None]], 1)
                   .astype(np.float32))
    return out


def test_map_of_perfect_predictions_is_100_and_of_shuffled_ones_low(data):
    perfect = _perfect(data.val)
    assert coco_map(perfect, data.val.y) == (100.0, 100.0)
    shuffled = perfect[1:] + perfect[:1]  # each image gets another image's boxes
    m50, m5095 = coco_map(shuffled, data.val.y)
    assert m50 < 20.0 and m5095 < m50 + 1e-9
    assert coco_map([np.zeros((0, 6), np.float32)] * len(perfect), data.val.y) == (0.0, 0.0)
    wrong_class = [np.concatenate([p[:, :5], 1 - p[:, 5:]], 1) for p in perfect]
    assert coco_map(wrong_class, data.val.y)[0] == 0.0


def test_paired_bootstrap_bound_of_the_map_drop(data):
    task = tasks.get("detect")
    perfect = _perfect(data.val)
    same = task.drop_bound(perfect, perfect, data.val, 0.95)
    assert same.point == 0.0 and same.upper == 0.0 and same.method == "paired-bootstrap"
    half = [p if i % 2 else p[:0] for i, p in enumerate(perfect)]  # misses half the images
    bound = task.drop_bound(perfect, half, data.val, 0.95)
    assert bound.point == pytest.approx(100.0 - coco_map(half, data.val.y)[0])
    assert bound.upper >= bound.point > 20.0


def test_detection_io_reads_and_matches():
    out = np.asarray([[0, 0, 10, 10, 0.4, 1], [20, 20, 30, 30, 0.9, 0]], np.float32)
    dets = read_detections([out])
    assert dets[0] == {"class": 0, "score": pytest.approx(0.9), "box": [20, 20, 30, 30]}
    other = read_detections(np.asarray([[1, 1, 10, 10, 0.8, 1], [20, 20, 30, 30, 0.5, 1]]))
    assert match_iou(dets, other) == [(1, 0, pytest.approx(0.81))]  # class 0 has no partner
    assert read_detections(np.zeros((0, 6), np.float32)) == []


def test_tiny_detector_trains_prunes_through_the_pan_and_exports_with_nms(data, trained,
                                                                         tmp_path):
    task = tasks.get("detect")
    example = torch.from_numpy(data.val.x[:2])
    head = task.head(trained, example)
    assert head == [f"{b}.{i}.pred" for b in ("box", "cls") for i in range(3)]
    assert task.feature_points(trained, example, 2) == ["neck.out4", "neck.out5"]
    groups, _ = prune.analyze(trained, data.train, PruneConfig(calib_batches=1, batch_size=8),
                              example, loss=task.loss, head=head)
    roots = {g.root.split(".")[0] for g in groups}
    assert {"backbone", "neck", "box", "cls"} <= roots  # backbone, neck and head prune
    pruned = prune.apply(trained, groups, {g.root: max(1, g.channels // 2) for g in groups},
                         example)
    assert prune.count_params(pruned) < 0.5 * prune.count_params(trained)
    mods = dict(pruned.named_modules())
    for h in head:  # the predictions keep their width (their inputs may be pruned)
        assert mods[h].out_channels == dict(trained.named_modules())[h].out_channels
    # every C2f's fusing conv takes exactly the channels its concatenation gives it
    for name in ("neck.top4", "neck.out3", "neck.out4", "neck.out5"):
        c2f = mods[name]
        given = c2f.cv0.conv.out_channels + c2f.cv1.conv.out_channels + sum(
            b.cv2.conv.out_channels for b in c2f.m)
        assert c2f.cv2.conv.in_channels == given
    with torch.no_grad():
        assert pruned(example).shape == trained(example).shape

    path = task.export(pruned, example, tmp_path / "pruned.onnx", data)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["hadmc.task"] == "detect" and json.loads(meta["hadmc.classes"]) == ["small",
                                                                                    "large"]
    assert float(meta["hadmc.score_threshold"]) == pytest.approx(0.05)
    assert "NonMaxSuppression" in {n.op_type for n in onnx.load(str(path)).graph.node}
    results = {}
    for name in ("onnxruntime", "openvino"):
        backend = backends.get(name)
        if not backend.available():
            continue
        dets = task.predict(backend, path, data.val.x)
        assert len(dets) == len(data.val) and all(d.ndim == 2 and d.shape[1] == 6 for d in dets)
        results[name] = dets
    assert "onnxruntime" in results
    if "openvino" in results:  # the same graph, the same detections
        for a, b in zip(results["onnxruntime"], results["openvino"], strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-2)


def test_detection_io_imports_without_torch_or_onnx():
    import subprocess
    import sys

    code = ("import sys, hadmc_core.tasks.detection_io; "
            "print('torch' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]
