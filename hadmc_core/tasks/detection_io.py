"""Reading a detection model's output without torch or onnx (numpy only; the agent
imports this).

The exported detector (``hadmc_core.tasks.detection_export``) has one output
``detections`` (K, 6): x1, y1, x2, y2, score, class in input pixels, after the score
threshold and NMS. ``read_detections`` turns it into dicts; ``match_iou`` pairs two lists of
detections of one image (e.g. a reference and a candidate model's) by class and IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def read_detections(outputs: Sequence[Any] | np.ndarray) -> list[dict[str, Any]]:
    """``[{"class": int, "score": float, "box": [x1, y1, x2, y2]}, ...]`` from a session's
    outputs (the list of arrays, or the ``detections`` array itself), best score first."""
    arr = outputs if isinstance(outputs, np.ndarray) else outputs[0]
    arr = np.asarray(arr, dtype=np.float32).reshape(-1, 6)
    rows = [{"class": int(r[5]), "score": float(r[4]),
             "box": [float(v) for v in r[:4]]} for r in arr]
    return sorted(rows, key=lambda d: -d["score"])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two x1, y1, x2, y2 boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
             + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter)
    return inter / union if union > 0 else 0.0


def match_iou(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], iou: float = 0.5
              ) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches ``(index in a, index in b, IoU)`` of detections of the same
    class with IoU >= ``iou``, highest-scoring detections of ``a`` first."""
    taken: set[int] = set()
    out = []
    for i in sorted(range(len(a)), key=lambda k: -a[k]["score"]):
        best, best_j = iou, -1
        for j, d in enumerate(b):
            if j in taken or d["class"] != a[i]["class"]:
                continue
            v = _iou(a[i]["box"], d["box"])
            if v >= best:
                best, best_j = v, j
        if best_j >= 0:
            taken.add(best_j)
            out.append((i, best_j, best))
    return out


_iou = iou
