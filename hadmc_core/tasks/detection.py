"""Object detection: task-aligned loss, mAP by the COCO evaluator, an ONNX graph that ends
in NMS, COCO / YOLO / fashion-mnist-scenes data.

- Model outputs (PyTorch): (batch, anchors, 4 + classes), boxes decoded to x1, y1, x2, y2
  in input pixels and class logits (``hadmc_core.models.yolo``); the loss is
  ``hadmc_core.tasks.detection_loss``.
- Export: ``hadmc_core.tasks.detection_export`` (decoding, score threshold and ONNX
  NonMaxSuppression in the graph, output ``detections`` (K, 6)); the runtime runs it one
  image at a time (``predict``).
- Metric: mAP@0.5 in points (the constraint metric; ``max_map_drop``), with mAP@0.5:0.95
  beside it (``coco_map``), both from pycocotools' COCOeval on the exported graph's
  detections.
- Head: the decoupled head's final convolutions (the model's ``head_layers()``, else every
  weight layer that feeds the output without another in between); distillation aligns the
  neck's outputs (``feature_stages()``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from hadmc_core.errors import HadmcError
from hadmc_core.tasks.base import GraphTask
from hadmc_core.tasks.detection_loss import detection_loss
from hadmc_core.tasks.graph import heads_by_trace

if TYPE_CHECKING:
    from torch import nn

    from hadmc_core.data import DataSplits, Split
    from hadmc_core.decision import DropBound

#: A baseline mAP@0.5 below this many points has learned next to nothing.
UNTRAINED_MAP = 5.0


def coco_map(detections: list[np.ndarray], targets: np.ndarray) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) in points of per-image ``detections`` (K, 6) against the
    padded box tables ``targets`` (N, M, 5), by pycocotools' COCOeval (100 detections an
    image at most, as COCO)."""
    ev = _evaluated(detections, targets)
    if ev is None:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
        ev.summarize()
    return max(0.0, 100.0 * float(ev.stats[1])), max(0.0, 100.0 * float(ev.stats[0]))


def _gt_and_results(detections: list[np.ndarray], targets: np.ndarray
                    ) -> tuple[list[dict], list[dict], list[dict], set[int]]:
    from hadmc_core.data.detection import boxes_of

    if len(detections) != len(targets):
        raise ValueError(f"{len(detections)} detection lists for {len(targets)} images")
    images: list[dict] = []
    anns: list[dict] = []
    classes: set[int] = set()
    for i, y in enumerate(targets):
        images.append({"id": i + 1})
        cls, boxes = boxes_of(y)
        for c, b in zip(cls, boxes, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c),
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h,
                         "iscrowd": 0})
            classes.add(int(c))
    res = [{"image_id": i + 1, "category_id": int(d[5]), "score": float(d[4]),
            "bbox": [float(d[0]), float(d[1]), float(d[2] - d[0]), float(d[3] - d[1])]}
           for i, det in enumerate(detections) for d in np.asarray(det).reshape(-1, 6)]
    return images, anns, res, classes | {int(d[5]) for det in detections
                                         for d in np.asarray(det).reshape(-1, 6)}


def _evaluated(detections: list[np.ndarray], targets: np.ndarray,
               only_map50: bool = False) -> Any:
    """pycocotools' COCOeval after ``evaluate()`` (None when there is nothing to match);
    ``only_map50``: IoU 0.5, all areas, 100 detections (what mAP@0.5 reads)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, res, classes = _gt_and_results(detections, targets)
    if not anns or not res:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c} for c in sorted(classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        if only_map50:
            ev.params.iouThrs = np.array([0.5])
            ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
            ev.params.maxDets = [100]
        ev.evaluate()
    return ev


def _map50_on(ev: Any, idx: np.ndarray) -> float:
    """mAP@0.5 (points) of an ``only_map50`` evaluation over the images ``idx`` (repeats
    allowed): COCOeval.accumulate on the per-image matches of those images."""
    if ev is None:
        return 0.0
    every, pe = ev.evalImgs, ev._paramsEval
    n_img = len(pe.imgIds)
    ev.evalImgs = [every[k * n_img + int(i)] for k in range(len(pe.catIds)) for i in idx]
    ids, ev.params.imgIds, pe.imgIds = pe.imgIds, list(range(len(idx))), list(range(len(idx)))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ev.accumulate()
    finally:
        ev.evalImgs, ev.params.imgIds, pe.imgIds = every, ids, ids
    prec = ev.eval["precision"][0, :, :, 0, -1]
    valid = prec[prec > -1]
    return 100.0 * float(valid.mean()) if valid.size else 0.0


class Detection(GraphTask):
    name = "detect"
    metric_name = "map50"

    def loss(self, outputs: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        return detection_loss(outputs, batch_targets)

    def distill_loss(self, student: torch.Tensor, teacher: torch.Tensor,
                     temperature: float) -> torch.Tensor:
        """BCE of the student's class logits against the teacher's softened probabilities,
        plus the L1 distance of the boxes (in units of 16 px) weighted by the teacher's
        confidence at each anchor."""
        t = temperature
        s_log, t_log = student[..., 4:].float(), teacher[..., 4:].float()
        cls = t * t * F.binary_cross_entropy_with_logits(s_log / t, torch.sigmoid(t_log / t))
        w = torch.sigmoid(t_log).amax(-1)
        l1 = (student[..., :4].float() - teacher[..., :4].float()).abs().mean(-1) / 16.0
        return cls + (w * l1).sum() / w.sum().clamp(min=1.0)

    def metric(self, outputs: list[np.ndarray], split: Split) -> float:
        """mAP@0.5 in points of per-image detections (``predict``)."""
        return coco_map(outputs, split.y)[0]

    def metrics(self, outputs: list[np.ndarray], split: Split) -> dict[str, float]:
        m50, m5095 = coco_map(outputs, split.y)
        return {"map50": m50, "map50_95": m5095}

    def per_image(self, outputs: list[np.ndarray], split: Split) -> list[np.ndarray]:
        """Each image's detections (mAP is no per-image mean; ``drop_bound`` resamples)."""
        return [np.asarray(o).reshape(-1, 6) for o in outputs]

    def drop_bound(self, base: list[np.ndarray], cand: list[np.ndarray], split: Split,
                   confidence: float) -> DropBound:
        """Paired bootstrap over images of the mAP@0.5 drop: each round scores both models
        on the same resampled images, with COCOeval's matching of each image done once."""
        from hadmc_core.decision import paired_bootstrap_bound

        evals = {id(base): _evaluated(base, split.y, True),
                 id(cand): _evaluated(cand, split.y, True)}
        return paired_bootstrap_bound(lambda r, idx: _map50_on(evals[id(r)], idx), base, cand,
                                      len(split), confidence)

    def check_model(self, model_outputs_shape: tuple[int, ...], data: DataSplits) -> None:
        shape = tuple(int(d) for d in model_outputs_shape)
        if len(shape) == 2:  # (1, classes) as a zoo model declares it
            classes = shape[1]
        elif len(shape) == 3 and shape[2] > 4:
            classes = shape[2] - 4
        else:
            raise HadmcError(f"a detector must output (batch, anchors, 4 + classes); this "
                             f"model outputs shape {shape}: use a detection architecture "
                             "(yolo-n, yolo-s)")
        if classes != data.num_classes:
            raise HadmcError(f"the dataset has {data.num_classes} classes but the detector "
                             f"predicts {classes}; build it for the dataset's classes")

    def warnings(self, baseline_metric: float, data: DataSplits) -> list[str]:
        if baseline_metric >= UNTRAINED_MAP:
            return []
        return [f"the baseline's validation mAP@0.5 is {baseline_metric:.1f}, below "
                f"{UNTRAINED_MAP:g}: it looks untrained, or trained for other data, so the "
                "mAP kept by compression means little; train it first (hadmc train --task "
                "detect)"]

    def head(self, module: nn.Module, example: torch.Tensor) -> list[str] | None:  # type: ignore[override]
        declared = getattr(module, "head_layers", None)
        if callable(declared):
            return list(declared())
        try:
            return heads_by_trace(module) or None
        except Exception:  # noqa: BLE001 - tracing is best effort; the last layer is the head
            one = super().head(module, example)
            return [one] if isinstance(one, str) else one

    def feature_points(self, module: nn.Module, example: torch.Tensor, n: int) -> list[str]:
        declared = getattr(module, "feature_stages", None)
        if callable(declared):
            return list(declared())[-n:] if n > 0 else []
        heads = self.head(module, example)
        from hadmc_core.tasks import graph

        return graph.feature_points(module, example, n, heads[0] if heads else None)

    def load_data(self, name_or_path: str, **options: object) -> DataSplits:
        from hadmc_core.data.detection import load_detection

        size = options.get("image_size")
        return load_detection(name_or_path, int(size) if size else None)  # type: ignore[call-overload]

    def export(self, model: nn.Module, example: torch.Tensor, path: Path,
               data: DataSplits) -> Path:
        from hadmc_core.tasks.detection_export import export_detector

        names = list(getattr(data, "class_names", []) or
                     [str(i) for i in range(data.num_classes)])
        return export_detector(model, example, path, names)

    def predict(self, backend: Any, path: Path, x: np.ndarray, threads: int | None = None
                ) -> list[np.ndarray]:
        """The detections of each image, run one at a time (the graph's NMS output has
        no batch axis)."""
        sess = backend.open(path, threads, batch=1)
        name = sess.input_names[0]
        return [sess.run({name: np.ascontiguousarray(x[i:i + 1])})[0]
                for i in range(len(x))]


def _register() -> None:
    from hadmc_core.tasks import register

    register(Detection())


_register()
