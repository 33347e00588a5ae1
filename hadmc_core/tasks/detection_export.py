"""The detector's ONNX graph: box decoding, score threshold and NMS inside the graph.

The PyTorch model (boxes decoded in its forward, class logits) is exported with
``torch.onnx.export`` as boxes (B, A, 4) clipped to the image and class probabilities
(B, C, A); then ONNX ``NonMaxSuppression`` (per class, IoU ``NMS_IOU``, score threshold,
at most ``MAX_PER_CLASS`` boxes a class) and gathers are appended, giving one output
``detections`` (K, 6): x1, y1, x2, y2, score, class, in input pixels. At batch 1 (what the
agent and the pipeline feed) the rows are the image's detections; the batch axis stays
open so calibration may feed several images. Metadata: ``hadmc.task`` = ``detect``,
``hadmc.classes`` (JSON list), ``hadmc.score_threshold``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hadmc_core.onnx_io import inline_shared_initializers

#: Score threshold baked into the graph: low, so mAP sees the whole precision-recall
#: curve; an application filters higher.
SCORE_THRESHOLD = 0.05
NMS_IOU = 0.6
MAX_PER_CLASS = 100
OPSET = 17


class _Decoded(nn.Module):
    def __init__(self, model: nn.Module, side_h: int, side_w: int) -> None:
        super().__init__()
        self.model, self.h, self.w = model, side_h, side_w

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        x = out[..., 0:4:2].clamp(0.0, float(self.w))
        y = out[..., 1:4:2].clamp(0.0, float(self.h))
        boxes = torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)
        return boxes, out[..., 4:].sigmoid().transpose(1, 2)


def export_detector(model: nn.Module, example: torch.Tensor, path: Path,
                    class_names: list[str], score_threshold: float = SCORE_THRESHOLD) -> Path:
    """Write the detector's ONNX with post-processing (see module doc) to ``path``."""
    model = model.cpu().eval()
    example = example[:1].cpu()
    wrapper = _Decoded(model, int(example.shape[2]), int(example.shape[3]))
    with torch.no_grad():
        anchors = int(wrapper(example)[0].shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["boxes", "scores"],
                          dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"},
                                        "scores": {0: "batch"}})
    inline_shared_initializers(path)
    _append_nms(path, anchors, class_names, score_threshold)
    return path


def _append_nms(path: Path, anchors: int, class_names: list[str], threshold: float) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph

    def const(name: str, value: Any, dtype: Any) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    i64 = np.int64
    nodes = [
        helper.make_node("NonMaxSuppression",
                         ["boxes", "scores", const("nms_max", [MAX_PER_CLASS], i64),
                          const("nms_iou", [NMS_IOU], np.float32),
                          const("nms_score", [threshold], np.float32)],
                         ["nms_selected"], name="nms", center_point_box=0),
        helper.make_node("Gather", ["nms_selected", const("col0", 0, i64)], ["nms_b"], axis=1,
                         name="nms_batch"),
        helper.make_node("Gather", ["nms_selected", const("col1", 1, i64)], ["nms_c"], axis=1,
                         name="nms_class"),
        helper.make_node("Gather", ["nms_selected", const("col2", 2, i64)], ["nms_a"], axis=1,
                         name="nms_anchor"),
        helper.make_node("Mul", ["nms_b", const("nms_anchors", anchors, i64)], ["nms_ba"],
                         name="nms_row_base"),
        helper.make_node("Add", ["nms_ba", "nms_a"], ["nms_row"], name="nms_row"),
        helper.make_node("Reshape", ["boxes", const("box_flat", [-1, 4], i64)],
                         ["boxes_flat"], name="boxes_flat"),
        helper.make_node("Gather", ["boxes_flat", "nms_row"], ["det_boxes"], axis=0,
                         name="det_boxes"),
        helper.make_node("GatherND", ["scores", "nms_selected"], ["det_scores"],
                         name="det_scores"),
        helper.make_node("Unsqueeze", ["det_scores", const("ax1", [1], i64)], ["det_s1"],
                         name="det_scores_col"),
        helper.make_node("Cast", ["nms_c"], ["det_cf"], to=TensorProto.FLOAT, name="det_cls"),
        helper.make_node("Unsqueeze", ["det_cf", "ax1"], ["det_c1"], name="det_cls_col"),
        helper.make_node("Concat", ["det_boxes", "det_s1", "det_c1"], ["detections"], axis=1,
                         name="detections"),
    ]
    g.node.extend(nodes)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 6]))
    for key, value in (("hadmc.task", "detect"), ("hadmc.classes", json.dumps(class_names)),
                       ("hadmc.score_threshold", repr(float(threshold)))):
        entry = m.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
