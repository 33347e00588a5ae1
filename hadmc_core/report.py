"""The compression report: typed here, written as report.json (schema in docs/report.md)
and report.png."""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hadmc_core.decision import DropBound

SCHEMA = "hadmc.report/1"


@dataclass
class ModelStats:
    """Baseline or compressed model. Accuracy is the task's metric (top-1 % for
    classification) from the backend's outputs; latency is at batch 1 from the report's
    ``latency_source``."""

    accuracy: float          # test split
    val_accuracy: float      # validation split (used for decisions)
    latency_ms: float
    latency_p90_ms: float
    size_bytes: int          # bytes of the artifact
    params: int
    macs: int
    #: this worker's median when the latency is estimated or from a device table
    measured_on_worker_ms: float | None = None
    #: paired drop from the baseline on the validation split (None for the baseline)
    val_drop: DropBound | None = None
    #: per targeted device, its own table's estimate before any correction (what the p50
    #: it reports for this version is compared with: ``hadmc_core.hal.feedback``)
    device_table_ms: dict[str, float] | None = None
    #: the device table's estimate before the device's correction (None: not corrected)
    uncorrected_ms: float | None = None
    #: the precision of the largest share of the layer time (which of a device's
    #: correction factors a p50 reported for this version informs)
    table_precision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("measured_on_worker_ms", "device_table_ms", "uncorrected_ms",
                    "table_precision"):
            if out[key] is None:
                del out[key]
        if self.val_drop is None:
            del out["val_drop"]
        else:
            out["val_drop"] = self.val_drop.to_dict()
        return out


@dataclass
class LayerDecision:
    """One conv/linear layer of the chosen model. ``precision`` is what the artifact
    stores it in; ``executed_as`` what the backend runs it as."""

    layer: str
    onnx_node: str | None
    kind: str
    in_channels: int
    out_channels: int
    original_out_channels: int | None
    precision: str
    executed_as: str
    quant_sensitivity: float | None = None
    int8_gain_ms_estimate: float = 0.0
    #: the original model's output channels this layer kept, in order (None: not recorded,
    #: e.g. a graph-only model); what an update-aware recompression reuses
    kept_out_channels: list[int] | None = None


@dataclass
class Candidate:
    """One variant tried (a row of ``candidates``)."""

    id: str
    latency_fraction: float
    higher_precision_layers: int
    val_accuracy: float
    latency_ms: float
    size_bytes: int
    params: int
    macs: int
    estimated_ms: float | None = None
    #: validation drop from the baseline, points, and its paired upper confidence bound
    #: (the accuracy decision compares the bound with the limit)
    val_drop: float | None = None
    val_drop_upper: float | None = None
    status: str = "tried"                # "accuracy": over the accuracy limit
    chosen: bool = False
    measured_on_worker_ms: float | None = None
    path: Path | None = None             # not serialised
    layers: list[LayerDecision] = field(default_factory=list)  # not serialised

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("path", "layers")}
        if out["measured_on_worker_ms"] is None:
            del out["measured_on_worker_ms"]
        for k in ("val_drop", "val_drop_upper"):
            if out[k] is not None:
                out[k] = round(out[k], 4)
        return out


@dataclass
class Stages:
    """Stages that ran, and those skipped with why (operator and node when a graph
    operator kept a stage out)."""

    ran: list[str] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def add_ran(self, stage: str) -> None:
        if stage not in self.ran:
            self.ran.append(stage)

    def skip(self, stage: str, reason: str, op: str | None = None,
             node: str | None = None) -> None:
        if stage not in self.ran and all(s["stage"] != stage for s in self.skipped):
            self.skipped.append({"stage": stage, "reason": reason, "op": op, "node": node})

    def to_dict(self) -> dict[str, Any]:
        return {"ran": list(self.ran), "skipped": [dict(s) for s in self.skipped]}


@dataclass
class Report:
    model: dict[str, Any]
    arch: dict[str, Any] | None
    task: str
    metric: str
    dataset: str
    profile: dict[str, Any]
    backend: str
    latency_source: str
    latency_model: str
    baseline: ModelStats
    compressed: ModelStats
    constraints: dict[str, Any]          # the configured limits
    violations: list[str]
    warnings: list[str]
    candidates: list[Candidate]
    layers: list[LayerDecision]
    stages: Stages
    fusion: dict[str, Any]
    int4_weight_only: dict[str, Any]
    distill_alignment: list[str]
    distill_precision: str
    stages_seconds: dict[str, float]
    config: dict[str, Any]
    #: "feature_stages" (declared by the model) or "graph" (found by the task)
    distill_alignment_source: str | None = None
    #: an update-aware recompression: which version's plan, what was reused or re-tuned
    update: dict[str, Any] | None = None
    #: how accuracy decisions were made: method, confidence, n, margins, split warning
    decision: dict[str, Any] = field(default_factory=dict)
    #: per pruned candidate: removed_macs_fraction, epochs of recovery, method
    recovery: list[dict[str, Any]] = field(default_factory=list)
    #: how the dataset's images were fitted to the model's input (None: they fit as given)
    data_adaptation: dict[str, Any] | None = None
    #: the alternatives a user would run instead, measured in the same job
    #: (``hadmc_core.references``)
    references: dict[str, Any] | None = None
    #: the device's correction from the p50s it reported (``hadmc_core.hal.feedback``):
    #: factor, pairs, versions, source; None when the latency is not corrected
    latency_correction: dict[str, Any] | None = None
    #: the latency ladder: floor_fraction, rungs (planned), tried (in order), descended
    #: (rungs added because the deepest so far met every constraint with room to spare),
    #: placement ("measured" or "estimate") and measured_ms ([estimated fraction, ms] of
    #: the structures timed to place the rungs)
    ladder: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: now_iso())
    versions: dict[str, str] = field(default_factory=lambda: library_versions())

    @property
    def met(self) -> bool:
        return not self.violations

    @property
    def message(self) -> str:
        return ("all constraints met" if self.met else
                "constraints not met; best result found is reported: "
                + "; ".join(self.violations))

    def summary(self) -> dict[str, float | None]:
        b, c = self.baseline, self.compressed
        upper = round(c.val_drop.upper, 3) if c.val_drop is not None else None
        return {
            "accuracy_drop_points": round(b.accuracy - c.accuracy, 3),
            "val_accuracy_drop_points": round(b.val_accuracy - c.val_accuracy, 3),
            "val_accuracy_drop_upper_points": upper,
            "speedup": round(b.latency_ms / c.latency_ms, 3) if c.latency_ms else math.nan,
            "compression": round(b.size_bytes / c.size_bytes, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "created": self.created, "model": self.model, "arch": self.arch,
            "task": self.task, "metric": self.metric, "dataset": self.dataset,
            "data_adaptation": self.data_adaptation,
            "profile": self.profile, "backend": self.backend,
            "latency_source": self.latency_source, "latency_model": self.latency_model,
            "latency_correction": self.latency_correction, "ladder": dict(self.ladder),
            "baseline": self.baseline.to_dict(), "compressed": self.compressed.to_dict(),
            "summary": self.summary(), "references": self.references,
            "constraints": {**self.constraints, "met": self.met, "message": self.message},
            "warnings": list(self.warnings), "decision": dict(self.decision),
            "recovery": [dict(r) for r in self.recovery],
            "candidates": [c.to_dict() for c in self.candidates],
            "layers": [asdict(d) for d in self.layers],
            "stages": self.stages.to_dict(), "fusion": self.fusion,
            "int4_weight_only": self.int4_weight_only,
            "distill_alignment": list(self.distill_alignment),
            "distill_alignment_source": self.distill_alignment_source,
            "distill_precision": self.distill_precision, "update": self.update,
            "stages_seconds": self.stages_seconds, "config": self.config,
            "versions": self.versions,
        }


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("hadmc", "torch", "torch-pruning", "onnx", "onnxruntime", "openvino", "nncf",
                 "numpy", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def _title(report: dict[str, Any]) -> str:
    name = (report.get("arch") or {}).get("arch") or (report.get("model") or {}).get("name")
    return f"{name or 'model'} on {report['dataset']} -> {report['profile']['name']}"


def plot(path: Path, report: dict[str, Any]) -> None:
    """Accuracy vs latency of every candidate tried; the chosen one marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    cands = report["candidates"]
    ax.scatter([c["latency_ms"] for c in cands], [c["val_accuracy"] for c in cands],
               c="tab:blue", label="candidates (validation)")
    for c in cands:
        ax.annotate(c["id"], (c["latency_ms"], c["val_accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    chosen = [c for c in cands if c.get("chosen")]
    if chosen:
        ax.scatter([chosen[0]["latency_ms"]], [chosen[0]["val_accuracy"]], s=160,
                   facecolors="none", edgecolors="tab:red", linewidths=2, label="chosen")
    b = report["baseline"]
    ax.scatter([b["latency_ms"]], [b["val_accuracy"]], marker="*", s=150, c="black",
               label="FP32 baseline")
    drop = report["constraints"]["max_accuracy_drop"]
    ax.axhline(b["val_accuracy"] - drop, ls="--", c="gray", lw=1,
               label=f"max drop {drop} pts")
    budget = report["constraints"].get("latency_budget_ms")
    if budget:
        ax.axvline(budget, ls=":", c="tab:orange", lw=1, label="latency budget")
    ax.set_xscale("log")
    source = report.get("latency_source", "measured")
    ax.set_xlabel(f"latency, ms (batch 1, {report.get('backend', 'onnxruntime')}, {source})")
    ax.set_ylabel(f"{report.get('metric', 'top1')}, % (validation)")
    ax.set_title(_title(report))
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
