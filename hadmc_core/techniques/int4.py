"""INT4 weight-only MatMul (ONNX Runtime's ``MatMulNBits``) as a candidate step.

Tried where it can pay: the backend runs MatMulNBits (ONNX Runtime with its contrib
kernel; OpenVINO, whose ONNX reader turns it into a FullyConnected layer with 4-bit
weights unpacked in the kernel and FP32 activations), the profile says its runtime runs
INT4 weight-only kernels, and MatMul/Gemm weights are at least ``min_weight_fraction`` of
the parameter bytes (measured on the baseline graph; conv nets hold far less, and are left
alone at no cost). The step starts from the candidate's FP32 graph: Gemm nodes become MatMul
(+ Add for the bias), MatMul weights become 4-bit blocks, and the accepted INT8 plan is
applied again to the rest of the graph. The controller measures the result like any variant; the
report says whether it was chosen, its accuracy and the bytes it saved, or why it was not
tried; on OpenVINO also what each MatMulNBits node ran as in the compiled model
(``executes_as``: a layer whose weights OpenVINO unpacked to FP32 at load time says so).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_core import graph_stats, quantize
from hadmc_core.config import Int4Config
from hadmc_core.context import Context, Variant, Work
from hadmc_core.report import Candidate
from hadmc_core.techniques import register
from hadmc_core.techniques.base import Technique

QUANTIZER = "onnxruntime.quantization.matmul_nbits_quantizer"
#: Backends that execute an ONNX MatMulNBits node with its weights kept in 4 bits.
RUNS_MATMULNBITS = ("onnxruntime", "openvino")


def why_not(ctx: Context, cfg: Int4Config, fraction: float) -> str | None:
    if ctx.backend.name not in RUNS_MATMULNBITS:
        return (f"the backend {ctx.backend.name} does not run MatMulNBits (INT4 weight-only "
                f"runs on {' and '.join(RUNS_MATMULNBITS)})")
    if not ctx.profile.int4_weight_only:
        return f"the profile {ctx.profile.name} does not run INT4 weight-only kernels"
    if importlib.util.find_spec(QUANTIZER) is None:
        return "this onnxruntime has no MatMulNBits quantizer"
    if fraction < cfg.min_weight_fraction:
        return (f"MatMul/Gemm weights are {fraction:.1%} of the parameter bytes (below "
                f"{cfg.min_weight_fraction:.0%}): the model's size is in other layers")
    return None


def gemm_to_matmul(src: Path, dst: Path, nodes: list[str]) -> dict[str, list[str]]:
    """Rewrite the named Gemm nodes (alpha = beta = 1, no transA) as MatMul (+ Add);
    returns node -> names of the nodes that replace it."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    out_nodes, made = [], {}  # type: list[Any], dict[str, list[str]]
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
            and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or node.name not in nodes or not plain \
                or node.input[1] not in inits:
            out_nodes.append(node)
            made.setdefault(node.name, [node.name])
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            w = np.ascontiguousarray(w.T)
        wname = node.input[1] + "_kn"
        g.initializer.append(numpy_helper.from_array(w, wname))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        out_nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mm_out],
                                          name=node.name))
        made[node.name] = [node.name]
        if has_bias:
            out_nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                              name=node.name + "_bias"))
            made[node.name].append(node.name + "_bias")
    del g.node[:]
    g.node.extend(out_nodes)
    used = {i for n in out_nodes for i in n.input} | {o.name for o in g.output}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    onnx.save(model, str(dst))
    return made


def matmul_nbits(src: Path, dst: Path, nodes: list[str], cfg: Int4Config) -> Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(str(src), bits=4, block_size=cfg.block_size,
                             is_symmetric=cfg.symmetric, nodes_to_include=nodes)
    q.process()
    q.model.save_model_to_file(str(dst), False)
    return dst


def openvino_executes_as(ctx: Context, path: Path, targets: list[str]) -> dict[str, str]:
    """MatMul node -> what OpenVINO's compiled model runs its MatMulNBits as: ``int4
    weights, fp32 compute`` (u4 weights in the FullyConnected kernel) or the precision it
    unpacked the weights to."""
    from hadmc_core.backends.openvino import OpenVinoBackend

    assert isinstance(ctx.backend, OpenVinoBackend)
    ran = ctx.backend.executed_precisions(path, ctx.lat.threads)
    out = {}
    for t in targets:
        p = ran.get(t + "_Q4", "not found in the compiled model")
        out[t] = ("int4 weights, fp32 compute" if p == "int4"
                  else f"{p} (OpenVINO unpacked the 4-bit weights when compiling)")
    return out


@register(Int4Config)
class Int4(Technique):
    phase = "graph"
    order = 20
    optional = True
    stage = "int4"

    def prepare(self, ctx: Context, cfg: Int4Config) -> bool:
        assert ctx.baseline_path is not None
        fraction, nodes = graph_stats.matmul_weight_fraction(ctx.baseline_path)
        reason = why_not(ctx, cfg, fraction)
        ctx.state["int4"] = {"applied": False, "matmul_weight_fraction": round(fraction, 4),
                             "nodes": len(nodes), "tried": [],
                             **({"reason": reason} if reason else {})}
        if reason:
            ctx.stages.skip("int4", reason)
        return reason is None

    def variants(self, ctx: Context, cfg: Int4Config, work: Work, current: Variant
                 ) -> Iterator[Variant]:
        assert work.fp32_path is not None
        layers = graph_stats.layers(work.fp32_path)
        targets = [n for n, ly in layers.items() if ly.op in ("MatMul", "Gemm")]
        if not targets:
            return
        stem = ctx.work / f"{current.candidate.id if current.candidate else work.cid}-int4"
        with ctx.stage("int4"):
            made = gemm_to_matmul(work.fp32_path, stem.with_suffix(".mm.onnx"), targets)
            path = matmul_nbits(stem.with_suffix(".mm.onnx"), stem.with_suffix(".q4.onnx"),
                                targets, cfg)
            if "int8" in current.precisions.values():
                # The INT8 plan again, on the rest of the graph: MatMulNBits is no
                # quantizer op, and the bias Adds stay in floating point.
                qc = ctx.cfg.quantize
                keep = [n for n, p in current.precisions.items() if p != "int8"]
                keep += [m for t in targets for m in made[t]] + [t + "_Q4" for t in targets]
                path = ctx.backend.quantize_int8(
                    path, stem.with_suffix(".onnx"), ctx.data.train.x[:qc.calib_samples],
                    keep_fp32=sorted(set(keep)), per_channel=qc.per_channel,
                    reduce_range=quantize.use_reduce_range(qc, ctx.profile))
        ctx.stages.add_ran("int4")
        if ctx.backend.name == "openvino":
            ctx.state["int4"]["executes_as"] = openvino_executes_as(ctx, path, targets)
        precisions = {**current.precisions, **{t: "int4" for t in targets}}
        yield Variant("int4", path, current.higher_precision_layers, precisions, current.info)

    def measured(self, ctx: Context, cfg: Int4Config, variant: Variant, cand: Candidate) -> None:
        parent = variant.parent
        row: dict[str, Any] = {"id": cand.id, "val_accuracy": round(cand.val_accuracy, 3),
                               "status": cand.status, "size_bytes": cand.size_bytes}
        if parent is not None:
            row["bytes_saved"] = parent.size_bytes - cand.size_bytes
            row["built_from"] = parent.id
            row["val_accuracy_change_points"] = round(cand.val_accuracy - parent.val_accuracy, 3)
        ctx.state["int4"]["tried"].append(row)
