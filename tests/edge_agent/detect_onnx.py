"""A tiny detector as HAD-MC exports one (docs/agent.md): ``images`` (N, 3, H, W) in 0..1 ->
``detections`` (K, 6) = x1, y1, x2, y2, score, class in input pixels, with ONNX
NonMaxSuppression and the score threshold inside the graph and the ``hadmc.*`` metadata.

Scores and box offsets are linear in the image's per-channel means, so different images
give different detections; ``scale`` perturbs the weights (a fine-tuned next version)."""

from __future__ import annotations

import json

import numpy as np

CLASSES = ["shirt", "boot", "bag"]
ANCHORS = 8
THRESHOLD = 0.05


def detector_onnx(seed: int = 0, scale: float = 0.0, side: int = 32,
                  threshold: float = THRESHOLD, task: str | None = "detect") -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c, a = len(CLASSES), ANCHORS
    w_cls = rng.standard_normal((3, c * a)).astype(np.float32) * 4
    b_cls = rng.standard_normal(c * a).astype(np.float32)
    w_box = rng.standard_normal((3, a * 4)).astype(np.float32) * 2
    if scale:
        more = np.random.default_rng(seed + 100)
        w_cls += more.standard_normal(w_cls.shape).astype(np.float32) * scale
        w_box += more.standard_normal(w_box.shape).astype(np.float32) * scale
    xy = rng.uniform(0, side * 0.6, (a, 2))
    wh = rng.uniform(side * 0.15, side * 0.4, (a, 2))
    base = np.concatenate([xy, xy + wh], 1).astype(np.float32)

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    inits = [const("w_cls", w_cls), const("b_cls", b_cls), const("w_box", w_box),
             const("base", base), const("shape_cls", np.array([0, c, a], np.int64)),
             const("shape_box", np.array([0, a, 4], np.int64)),
             const("max_out", np.array([20], np.int64)),
             const("iou", np.array([0.5], np.float32)),
             const("thr", np.array([threshold], np.float32)),
             const("i_ba", np.array([0, 2], np.int64)), const("i_c", np.array([1], np.int64)),
             const("ax1", np.array([1], np.int64))]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "w_cls"], ["l0"]),
        helper.make_node("Add", ["l0", "b_cls"], ["l1"]),
        helper.make_node("Reshape", ["l1", "shape_cls"], ["l2"]),
        helper.make_node("Sigmoid", ["l2"], ["scores"]),
        helper.make_node("MatMul", ["m", "w_box"], ["o0"]),
        helper.make_node("Reshape", ["o0", "shape_box"], ["o1"]),
        helper.make_node("Add", ["o1", "base"], ["boxes"]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "thr"],
                         ["sel"]),
        helper.make_node("Gather", ["sel", "i_ba"], ["ba"], axis=1),
        helper.make_node("GatherND", ["boxes", "ba"], ["sel_boxes"]),
        helper.make_node("GatherND", ["scores", "sel"], ["s0"]),
        helper.make_node("Unsqueeze", ["s0", "ax1"], ["sel_scores"]),
        helper.make_node("Gather", ["sel", "i_c"], ["c0"], axis=1),
        helper.make_node("Cast", ["c0"], ["sel_cls"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["sel_boxes", "sel_scores", "sel_cls"], ["detections"],
                         axis=1),
    ]
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"hadmc.classes": json.dumps(CLASSES), "hadmc.score_threshold": repr(threshold)}
    if task is not None:
        meta["hadmc.task"] = task
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"images": x})[0])


def image(seed: int, side: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, side, side), dtype=np.float32)
