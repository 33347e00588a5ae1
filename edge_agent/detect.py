"""Detection models on the device, without torch or the onnx package.

A detector exported by HAD-MC takes ``images`` (1, 3, H, W) in 0..1 and gives one output
``detections`` (K, 6): x1, y1, x2, y2, score, class in input pixels, after the score
threshold and NMS inside the graph. Its ONNX ``metadata_props`` say ``hadmc.task`` =
``detect``, ``hadmc.classes`` (JSON list of names) and ``hadmc.score_threshold``.

- ``model_info(path)``: the task, class names and threshold, read from the file by a small
  protobuf walk over ``ModelProto``'s top-level fields (the graph is skipped with a seek;
  no runtime needed, so ONNX Runtime and OpenVINO agents read it alike).
- ``detections(outputs, info)``: the output as ``[{"class", "label", "score", "box"}]``.
- ``compare_probe(sess, probe, info)``: the smoke test of a detector. Detections on the
  probe inputs must match the expected ones one to one: same class, IoU >= ``PROBE_IOU``
  and scores within ``PROBE_SCORE_TOL``. A detection within ``PROBE_SCORE_TOL`` of the
  score threshold may appear or vanish (a runtime's rounding moves it across); any other
  unmatched detection fails.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import SmokeTestError
from hadmc_core.delta import onnxwire
from hadmc_core.delta.errors import FormatError
from hadmc_core.tasks.detection_io import iou as box_iou

PROBE_IOU = 0.9
PROBE_SCORE_TOL = 0.05
OUTPUT = "detections"


@dataclass(frozen=True)
class ModelInfo:
    task: str = "classify"
    classes: list[str] = field(default_factory=list)
    score_threshold: float | None = None

    @property
    def is_detector(self) -> bool:
        return self.task == "detect"


def read_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict (``hadmc_core.delta.onnxwire``, which
    reads the protobuf wire format without the onnx package; the file is mapped, so only
    the model's top level is read)."""
    if path.stat().st_size == 0:
        return {}
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            return onnxwire.metadata_props(view)
        finally:
            view.release()


@lru_cache(maxsize=64)
def _info(path: str, mtime_ns: int) -> ModelInfo:
    try:
        meta = read_metadata(Path(path))
    except (FormatError, OSError):
        return ModelInfo()  # not readable as ONNX here: the runtime will say why
    try:
        classes = [str(c) for c in json.loads(meta.get("hadmc.classes") or "[]")]
    except (ValueError, TypeError):
        classes = []
    try:
        thr = float(meta["hadmc.score_threshold"]) if "hadmc.score_threshold" in meta else None
    except ValueError:
        thr = None
    return ModelInfo(meta.get("hadmc.task") or "classify", classes, thr)


def model_info(path: Path) -> ModelInfo:
    """What the model at ``path`` does (cached per file and modification time)."""
    return _info(str(path), path.stat().st_mtime_ns)


def _table(outputs: dict[str, np.ndarray] | list[np.ndarray]) -> np.ndarray:
    arr = outputs.get(OUTPUT, next(iter(outputs.values()))) if isinstance(outputs, dict) \
        else outputs[0]
    arr = np.asarray(arr, np.float32)
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ValueError(f"a detector's output is (K, 6); got {arr.shape}")
    return arr


def detections(outputs: dict[str, np.ndarray] | list[np.ndarray], info: ModelInfo
               ) -> list[dict[str, Any]]:
    """``[{"class": 3, "label": "Dress", "score": 0.91, "box": [x1, y1, x2, y2]}]``, best
    score first; boxes in input pixels, ``label`` null without class names."""
    rows = []
    for r in _table(outputs):
        c = int(r[5])
        rows.append({"class": c, "label": info.classes[c] if 0 <= c < len(info.classes)
                     else None, "score": round(float(r[4]), 6),
                     "box": [round(float(v), 3) for v in r[:4]]})
    return sorted(rows, key=lambda d: -d["score"])


def serve_fields(path: Path, feeds: dict[str, np.ndarray],
                 outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the inference endpoint adds for a detector (nothing for other models):
    ``task`` and ``detections``. ValueError for a batch of several images (the rows of
    ``detections`` do not say which image they belong to)."""
    info = model_info(path)
    if not info.is_detector:
        return {}
    first = next(iter(feeds.values()))
    if first.ndim == 4 and first.shape[0] != 1:
        raise ValueError(f"a detector takes one image per request (1, 3, H, W); got "
                         f"{tuple(first.shape)}")
    return {"task": "detect", "detections": detections(outputs, info)}


def match(want: np.ndarray, got: np.ndarray, info: ModelInfo, iou: float = PROBE_IOU,
          score_tol: float = PROBE_SCORE_TOL) -> float:
    """Match two (K, 6) tables one to one (see module doc); returns the largest score
    difference among the matches, SmokeTestError naming the first detection that fails."""
    edge = (info.score_threshold or 0.0) + score_tol if info.score_threshold is not None \
        else -1.0
    taken: set[int] = set()
    worst = 0.0
    for i in np.argsort(-want[:, 4], kind="stable"):
        w = want[i]
        best, best_j = 0.0, -1
        for j, g in enumerate(got):
            if j not in taken and int(g[5]) == int(w[5]) and abs(g[4] - w[4]) <= score_tol:
                v = box_iou(w[:4].tolist(), g[:4].tolist())
                if v > best:
                    best, best_j = v, j
        if best >= iou:
            taken.add(best_j)
            worst = max(worst, float(abs(got[best_j][4] - w[4])))
        elif w[4] >= edge:
            raise SmokeTestError(
                f"expected detection class {int(w[5])} score {w[4]:.3f} box "
                f"{[round(float(v), 1) for v in w[:4]]} has no match (same class, IoU >= "
                f"{iou:g}, score within {score_tol:g}; best IoU {best:.3f}); {len(got)} "
                f"detections against {len(want)} expected")
    extra = [j for j in range(len(got)) if j not in taken and got[j][4] >= edge]
    if extra:
        g = got[extra[0]]
        raise SmokeTestError(f"{len(extra)} unexpected detection(s), e.g. class {int(g[5])} "
                             f"score {g[4]:.3f} box {[round(float(v), 1) for v in g[:4]]}; "
                             f"{len(got)} detections against {len(want)} expected")
    return worst


def compare_probe(sess: Any, probe: Any, info: ModelInfo) -> float:
    """Run the probe inputs and match the detections with the probe's (``match``)."""
    name = sess.input_names[0]
    try:
        outs = sess.run({name: probe.inputs})
    except Exception as e:  # noqa: BLE001 - runtimes raise their own types
        raise SmokeTestError(f"the model does not run on the probe inputs "
                             f"{probe.inputs.shape}: {str(e)[:200]}") from e
    names = list(getattr(sess, "output_names", []) or [])
    want = np.asarray(probe.outputs, np.float32)
    try:
        got = _table(dict(zip(names, outs, strict=True)) if names else list(outs))
        want = _table([want.reshape(0, 6) if want.size == 0 else want])
    except ValueError as e:
        raise SmokeTestError(f"detections do not fit the probe: {e}") from e
    return match(want, got, info)
