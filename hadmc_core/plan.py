"""The plan of a compressed version, and what an update-aware recompression reuses of it.

A version's plan is what its compression decided: which output channels of the original
model each layer kept (``layers[].kept_out_channels`` in report.json), which layers are
stored in INT8 (``layers[].precision``), and the quantization parameters (scales and zero
points of every QuantizeLinear/DequantizeLinear) held in its artifact, model.onnx.

``load_plan(dir or report.json)`` reads it back. ``requantize_like`` writes a new model in
the exact graph of the deployed artifact: every quantized weight re-quantized with the
deployed scale and zero point, floating-point weights replaced, activation scales kept.
Nothing but weight values then differs between the two files, which is what the delta
engine's tensor-aware transforms (``sub-sparse`` for INT8 weights) compress best.
``deployed_weights`` reads the deployed model's (dequantized) layer weights so that
fine-tuning can start from what the devices run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hadmc_core.errors import HadmcError
from hadmc_core.fsutil import atomic_path

if TYPE_CHECKING:
    from hadmc_core.prune import Group


class PlanError(HadmcError):
    """A version whose plan cannot be read, or reused for this model."""


@dataclass
class PlannedLayer:
    layer: str
    onnx_node: str | None
    out_channels: int
    original_out_channels: int | None
    precision: str
    kept_out_channels: list[int] | None


@dataclass
class Plan:
    """The decisions of one compressed version (see module doc)."""

    source: str                              # where it was read from, for messages
    artifact: Path                           # the version's model.onnx
    model: dict[str, Any]                    # report's "model" (origin)
    arch: dict[str, Any] | None
    layers: dict[str, PlannedLayer]
    latency_fraction: float
    report: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def int8_layers(self) -> list[str]:
        return sorted(n for n, ly in self.layers.items() if ly.precision == "int8")

    @property
    def fp32_nodes(self) -> list[str]:
        return sorted(ly.onnx_node for ly in self.layers.values()
                      if ly.onnx_node and ly.precision != "int8")

    @property
    def pruned(self) -> bool:
        return any(ly.original_out_channels is not None
                   and ly.out_channels != ly.original_out_channels
                   for ly in self.layers.values())

    def kept(self, layer: str) -> list[int] | None:
        ly = self.layers.get(layer)
        return None if ly is None else ly.kept_out_channels


def from_report(report: dict[str, Any], artifact: Path, source: str = "report") -> Plan:
    """The plan of a version from its report (``report.json`` as a dict) and artifact."""
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith(
            "hadmc.report/"):
        raise PlanError(f"{source} is not a HAD-MC compression report")
    rows = report.get("layers") or []
    if not rows:
        raise PlanError(f"{source} lists no layers; it is not the report of a compressed "
                        "model whose plan can be reused")
    layers: dict[str, PlannedLayer] = {}
    for r in rows:
        layers[r["layer"]] = PlannedLayer(
            r["layer"], r.get("onnx_node"), int(r["out_channels"]),
            r.get("original_out_channels"), str(r.get("precision", "fp32")),
            r.get("kept_out_channels"))
    pruned = [ly for ly in layers.values() if ly.original_out_channels is not None
              and ly.out_channels != ly.original_out_channels]
    missing = [ly.layer for ly in pruned if ly.kept_out_channels is None]
    if missing:
        raise PlanError(f"{source} does not record which channels its pruned layers kept "
                        f"({missing[0]}, ...; written by an older HAD-MC), so its structure "
                        "cannot be reused; compress without update_of, or allow restructuring")
    if any(ly.precision == "int4" for ly in layers.values()):
        raise PlanError(f"{source} has INT4 weight-only layers; reusing an INT4 plan is not "
                        "supported; allow restructuring to choose afresh")
    chosen = [c for c in report.get("candidates") or [] if c.get("chosen")]
    fraction = float(chosen[0]["latency_fraction"]) if chosen else 1.0
    artifact = Path(artifact)
    if not artifact.is_file():
        raise PlanError(f"the artifact of {source} is missing: {artifact}")
    return Plan(source, artifact, dict(report.get("model") or {}), report.get("arch"),
                layers, fraction, report)


def load_plan(path: Path | str) -> Plan:
    """A version's plan from its output directory (report.json + model.onnx) or from its
    report.json (model.onnx beside it)."""
    path = Path(path)
    report_path = path / "report.json" if path.is_dir() else path
    if not report_path.is_file():
        raise PlanError(f"{path}: no report.json there (give the output directory of "
                        "`hadmc compress` or its report.json)")
    try:
        report = json.loads(report_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"{report_path} is not a readable report ({e})") from e
    return from_report(report, report_path.parent / "model.onnx", str(report_path))


def check_compatible(plan: Plan, arch: dict[str, Any] | None, layer_shapes: dict[str, int]
                     ) -> None:
    """Raise PlanError when ``plan`` was made for another architecture than the model
    whose original layers (``layer -> out channels``) are given."""
    if plan.arch is not None and arch is not None:
        keys = ("arch", "in_channels", "num_classes", "stem", "width")
        diff = [k for k in keys if plan.arch.get(k) != arch.get(k)]
        if diff:
            raise PlanError(f"{plan.source} was made for another architecture ("
                            + ", ".join(f"{k} {plan.arch.get(k)!r} vs {arch.get(k)!r}"
                                        for k in diff) + ")")
    ours, theirs = set(layer_shapes), set(plan.layers)
    if ours != theirs:
        odd = sorted(ours ^ theirs)[:3]
        raise PlanError(f"{plan.source} was made for another architecture: its layers "
                        f"differ from this model's ({', '.join(odd)}, ...)")
    for name, ly in plan.layers.items():
        orig = ly.original_out_channels
        if orig is not None and orig != layer_shapes[name]:
            raise PlanError(f"{plan.source} was made for another architecture: {name} had "
                            f"{orig} output channels there, {layer_shapes[name]} here")


def kept_by_group(groups: list[Group], outs: dict[str, int]) -> dict[str, list[int]]:
    """Per layer, the original output channels a pruned model kept, from its layers' output
    channels (``outs``): for each coupled group the channels Torch-Pruning keeps when
    ``prune.apply`` removes the group's ``channels - kept`` least important ones
    (``Group.kept``), in their original order."""
    out: dict[str, list[int]] = {}
    for g in groups:
        k = outs.get(g.root)
        if k is None:
            continue
        kept = g.kept(k)
        for layer in g.outs:
            out[layer] = kept
    return out


def record_kept(layers: list[Any], groups: list[Group] | None, plan: Plan | None) -> None:
    """Fill ``kept_out_channels`` of the report's layer decisions: from the plan that was
    reused, else from the pruning groups; an unpruned layer keeps every channel."""
    outs = {d.layer: d.out_channels for d in layers}
    kept = kept_by_group(groups or [], outs)
    for d in layers:
        if plan is not None and plan.kept(d.layer) is not None:
            d.kept_out_channels = list(plan.kept(d.layer) or [])
        elif d.layer in kept:
            d.kept_out_channels = kept[d.layer]
        elif d.original_out_channels is not None and d.out_channels == d.original_out_channels:
            d.kept_out_channels = list(range(d.out_channels))


def removed_indices(plan: Plan, group: Group) -> list[int]:
    """The channels of ``group`` to remove to get the plan's kept channels."""
    kept = None
    for layer in [group.root, *group.outs]:
        kept = plan.kept(layer)
        if kept is not None:
            break
    if kept is None:  # the plan did not prune this group
        return []
    if any(i < 0 or i >= group.channels for i in kept):
        raise PlanError(f"{plan.source}: kept channels of {group.root} do not fit its "
                        f"{group.channels} channels")
    keep = set(kept)
    return [i for i in range(group.channels) if i not in keep]


# --- the artifact side: ONNX initializers ---------------------------------------------

def _onnx() -> Any:
    import onnx
    from onnx import numpy_helper

    return onnx, numpy_helper


def _dq_info(model: Any) -> dict[str, tuple[str, str | None, int]]:
    """Quantized initializer -> (scale initializer, zero point initializer, axis) for
    every DequantizeLinear that reads an initializer."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
            out[n.input[0]] = (n.input[1], zp, axis)
    return out


def _broadcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if v.size == 1 or ndim == 0:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = v.size
    return v.reshape(shape)


def _fp32_name(qname: str, fp32: dict[str, np.ndarray]) -> str | None:
    for suffix in ("_quantized", "_q"):
        if qname.endswith(suffix) and qname[: -len(suffix)] in fp32:
            return qname[: -len(suffix)]
    return None


def requantize_like(template: Path, fp32_path: Path, out: Path) -> dict[str, int]:
    """Write ``out``: the graph of ``template`` (a deployed QDQ artifact) with the weights
    of ``fp32_path`` (the new model's FP32 export, same structure), quantized with the
    template's scales and zero points. Returns counts (``requantized``, ``replaced``,
    ``clipped`` weights that fell outside the old range). Raises PlanError when a weight
    of the template has no counterpart of the same shape in ``fp32_path``."""
    onnx, nh = _onnx()
    tm = onnx.load(str(template))
    fp = onnx.load(str(fp32_path))
    fp32 = {i.name: nh.to_array(i) for i in fp.graph.initializer}
    inits = {i.name: i for i in tm.graph.initializer}
    values = {name: nh.to_array(i) for name, i in inits.items()}
    dq = _dq_info(tm)
    stats = {"requantized": 0, "replaced": 0, "clipped": 0}
    for qname, (sname, zname, axis) in dq.items():
        src = _fp32_name(qname, fp32)
        if src is None:
            continue  # a quantized constant that is not a weight of the model
        q = values[qname]
        w = fp32[src]
        if w.shape != q.shape:
            raise PlanError(f"weight {src}: shape {w.shape} here, {q.shape} in the deployed "
                            "model")
        scale = _broadcast(values[sname].astype(np.float64), q.ndim, axis)
        zp = (_broadcast(values[zname].astype(np.float64), q.ndim, axis)
              if zname else np.zeros(()))
        info = np.iinfo(q.dtype)
        r = np.round(w.astype(np.float64) / scale) + zp
        stats["clipped"] += int(((r < info.min) | (r > info.max)).sum())
        new = np.clip(r, info.min, info.max).astype(q.dtype)
        inits[qname].CopyFrom(nh.from_array(new, qname))
        stats["requantized"] += 1
    quantized_src = {_fp32_name(q, fp32) for q in dq}
    for name, init in inits.items():
        if name in dq or name in quantized_src or name not in fp32:
            continue
        old, new_v = values[name], fp32[name]
        if old.dtype != new_v.dtype or old.shape != new_v.shape:
            raise PlanError(f"tensor {name}: {new_v.dtype}{list(new_v.shape)} here, "
                            f"{old.dtype}{list(old.shape)} in the deployed model")
        if not np.array_equal(old, new_v):
            init.CopyFrom(nh.from_array(new_v, name))
            stats["replaced"] += 1
    if stats["requantized"] == 0 and dq:
        raise PlanError("no quantized weight of the deployed model was found in the new "
                        "model's graph (their tensor names differ)")
    with atomic_path(Path(out)) as tmp:
        onnx.save(tm, str(tmp))
    return stats


def deployed_weights(artifact: Path, nodes: dict[str, str]
                     ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``layer -> (weight, bias)`` of the deployed model, dequantized, for the ONNX nodes
    ``nodes`` (``layer -> node``) of its graph."""
    onnx, nh = _onnx()
    m = onnx.load(str(artifact))
    values = {i.name: nh.to_array(i) for i in m.graph.initializer}
    dq_out = {}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in values:
            dq_out[n.output[0]] = n
    qdq_fp32: dict[str, str] = {}  # output of DQ(Q(fp32 initializer)) -> that initializer
    q_of = {n.output[0]: n for n in m.graph.node if n.op_type == "QuantizeLinear"}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_of:
            src = q_of[n.input[0]].input[0]
            if src in values:
                qdq_fp32[n.output[0]] = src
    by_name = {n.name: n for n in m.graph.node}

    def value(name: str) -> np.ndarray:
        if name in values:
            return values[name].astype(np.float32)
        if name in qdq_fp32:
            return values[qdq_fp32[name]].astype(np.float32)
        d = dq_out.get(name)
        if d is None:
            raise PlanError(f"{artifact}: tensor {name} is neither a weight nor a "
                            "dequantized weight")
        q = values[d.input[0]].astype(np.float64)
        axis = next((a.i for a in d.attribute if a.name == "axis"), 1)
        s = _broadcast(values[d.input[1]].astype(np.float64), q.ndim, axis)
        z = (_broadcast(values[d.input[2]].astype(np.float64), q.ndim, axis)
             if len(d.input) > 2 and d.input[2] else 0.0)
        return ((q - z) * s).astype(np.float32)

    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for layer, node_name in nodes.items():
        node = by_name.get(node_name)
        if node is None:
            raise PlanError(f"{artifact}: node {node_name} (layer {layer}) is not in the "
                            "deployed graph")
        w = value(node.input[1])
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in
                                              node.attribute):
            w = w.T
        b = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        out[layer] = (w, b)
    return out
