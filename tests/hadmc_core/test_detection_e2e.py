"""A tiny detector compressed end to end by the CLI: ``hadmc compress --task detect`` on a
COCO folder of fashion-mnist scenes, with a small config that runs every stage once
(pruning across backbone, neck and head, distillation, BatchNorm folding, INT8 of the
network part). The report carries mAP@0.5 and mAP@0.5:0.95 from COCOeval, and the output
ONNX runs in ONNX Runtime with its NMS output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hadmc_core.data.detection import boxes_of, fashion_mnist_scenes, load_detection
from hadmc_core.models import ArchSpec, save_weights
from hadmc_core.models.yolo import YOLO
from hadmc_core.train import TrainConfig, fit_detector

HADMC = str(Path(sys.executable).parent / "hadmc")
SIDE = 64
#: Every stage once, small: the whole CLI run takes seconds on two cores.
FAST = {"prune": {"uniform_ratio": 0.5, "importance": "l1", "calib_batches": 1,
                  "batch_size": 16},
        "distill": {"epochs": 1, "samples": 48, "batch_size": 16, "feature_stages": 2},
        "quantize": {"keep_ladder": [0], "calib_samples": 16, "sensitivity_samples": 4},
        "measure": {"runs": 5, "warmup": 1, "in_graph": False, "references": False},
        "max_candidates": 1}


def write_coco(root: Path, n: int = 60, side: int = SIDE) -> Path:
    """``n`` fashion-mnist scenes as a COCO folder (PNG images, boxes in pixels)."""
    from PIL import Image

    scenes = fashion_mnist_scenes(side, (n, 0, 0)).train
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i, (x, y) in enumerate(zip(scenes.x, scenes.y, strict=True)):
        name = f"s{i}.png"
        Image.fromarray((x.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(
            root / "images" / name)
        images.append({"id": i, "file_name": name, "width": side, "height": side})
        cls, boxes = boxes_of(y)
        for c, b in zip(cls, boxes, strict=True):
            anns.append({"id": len(anns), "image_id": i, "category_id": int(c) + 1,
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                  float(b[3] - b[1])], "area": 1.0, "iscrowd": 0})
    cats = [{"id": c + 1, "name": str(c)} for c in range(10)]
    (root / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco") / "scenes")


@pytest.fixture(scope="module")
def weights(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = load_detection(str(scenes), SIDE)
    torch.manual_seed(0)
    spec = ArchSpec("yolo-n", 3, data.num_classes, "small", 0.25)
    model = YOLO(3, data.num_classes, width=0.25)
    fit_detector(model, data.train, TrainConfig(epochs=3, batch_size=16, lr=0.01))
    path = tmp_path_factory.mktemp("w") / "yolo-n.safetensors"
    save_weights(model.eval(), path, spec)
    return path


def test_cli_compresses_a_detector_end_to_end(scenes: Path, weights: Path, tmp_path: Path):
    import onnx
    import onnxruntime as ort

    cfg = tmp_path / "fast.json"
    cfg.write_text(json.dumps(FAST))
    out = tmp_path / "out"
    run = subprocess.run(
        [HADMC, "compress", "--task", "detect", "--weights", str(weights), "--data",
         str(scenes), "--image-size", str(SIDE), "--max-map-drop", "100", "--config",
         str(cfg), "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "map50" in run.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["task"] == "detect" and rep["metric"] == "map50"
    # mAP figures from COCOeval on the exported graphs' detections
    for name in ("baseline", "compressed"):
        m = rep["metrics"][name]
        assert set(m) == {"map50", "map50_95"}
        assert 0.0 <= m["map50_95"] <= m["map50"] <= 100.0
        assert m["map50"] == pytest.approx(rep[name]["accuracy"], abs=0.01)
    assert {"prune", "distill", "fuse", "quantize"} <= set(rep["stages"]["ran"])
    assert rep["compressed"]["params"] < 0.5 * rep["baseline"]["params"]
    assert rep["distill_alignment"] == ["neck.out4", "neck.out5"]
    model = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"NonMaxSuppression", "QuantizeLinear", "Conv"} <= ops
    assert {p.key: p.value for p in model.metadata_props}["hadmc.task"] == "detect"
    # the pruned PAN's concatenations line up: the graph runs at the model's input size
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["detections"]
    x = load_detection(str(scenes), SIDE).test.x[:2]
    for i in range(len(x)):
        det = sess.run(None, {"images": x[i:i + 1]})[0]
        assert det.ndim == 2 and det.shape[1] == 6
        if len(det):
            assert det[:, 4].min() >= 0.05 and (det[:, :4] >= 0).all()
            assert (det[:, :4] <= SIDE).all() and set(det[:, 5]) <= set(range(10))
