"""The compression report: report.json (schema in docs/report.md) and report.png."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "hadmc.report/1"


@dataclass
class ModelStats:
    accuracy: float          # top-1 % on the test split, evaluated by ONNX Runtime
    val_accuracy: float      # top-1 % on the validation split (used for decisions)
    latency_ms: float        # median wall-clock, batch 1, ONNX Runtime
    latency_p90_ms: float
    size_bytes: int          # bytes of the ONNX file
    params: int
    macs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("hadmc", "torch", "torch-pruning", "onnx", "onnxruntime", "numpy",
                 "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


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
    ax.set_xlabel("latency, ms (batch 1, ONNX Runtime, measured)")
    ax.set_ylabel("top-1 accuracy, % (validation)")
    ax.set_title(f"{report['arch']['arch']} on {report['dataset']} -> {report['profile']['name']}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
