"""The demo's closing summary: baseline and compressed side by side, from a job's report."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_service.py"


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_service", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(**extra: Any) -> dict[str, Any]:
    """The parts of a report.json (docs/report.md) the summary reads."""
    stats = {"latency_p90_ms": 0.0, "params": 1, "macs": 1}
    return {
        "schema": "hadmc.report/1", "dataset": "fashion-mnist",
        "baseline": {**stats, "accuracy": 91.37, "val_accuracy": 91.1, "latency_ms": 1.2345,
                     "size_bytes": 2_803_112},
        "compressed": {**stats, "accuracy": 90.8, "val_accuracy": 90.7, "latency_ms": 0.4561,
                       "size_bytes": 741_000},
        "summary": {"accuracy_drop_points": 0.57, "val_accuracy_drop_points": 0.4,
                    "speedup": 2.707, "compression": 3.783},
        "constraints": {"max_accuracy_drop": 1.0, "latency_budget_ms": None,
                        "size_budget_mb": None, "met": True, "message": "all constraints met"},
        **extra}


def test_side_by_side(demo: ModuleType) -> None:
    text = demo.side_by_side(_report(warnings=[]), 0.4712, "http://127.0.0.1:8000/ui")
    assert text.splitlines() == [
        "                        baseline    compressed",
        "top-1 (test split)       91.37 %       90.80 %   -0.57 points",
        "latency (job, ORT)      1.234 ms      0.456 ms   2.71x speedup (median, batch 1)",
        "latency (device)               -      0.471 ms   p50 the agent measured after the update",
        "size (ONNX file)         2.80 MB       0.74 MB   3.78x smaller",
        "constraints: all constraints met",
        "dashboard: http://127.0.0.1:8000/ui",
    ]


def test_side_by_side_without_a_device_latency_and_with_warnings(demo: ModuleType) -> None:
    report = _report(warnings=["the baseline's validation top-1 is 9.7%, near chance"])
    lines = demo.side_by_side(report, None, "http://h:1/ui").splitlines()
    assert lines[3] == ("latency (device)               -  not reported   "
                        "p50 the agent measured after the update")
    assert lines[-2:] == ["warning: the baseline's validation top-1 is 9.7%, near chance",
                          "dashboard: http://h:1/ui"]


def test_an_older_report_without_warnings(demo: ModuleType) -> None:
    assert "warning" not in demo.side_by_side(_report(), 1.0, "http://h:1/ui")


def test_the_references_the_job_measured_follow_the_constraints(demo: ModuleType) -> None:
    refs = {"chosen": {"runtime": "onnxruntime", "latency_ms": 0.2, "accuracy": 90.8},
            "rows": [{"name": "openvino-fp32", "latency_ms": 0.3, "accuracy": 91.37,
                      "accuracy_minus_chosen": 0.57, "chosen_speedup": 1.5},
                     {"name": "onnxruntime-fp32", "latency_ms": 0.1, "accuracy": 91.37,
                      "accuracy_minus_chosen": 0.57, "chosen_speedup": 0.5},
                     {"name": "openvino-nncf-int8", "error": "RuntimeError: no"}]}
    lines = demo.side_by_side(_report(references=refs), 0.2, "http://h:1/ui").splitlines()
    at = lines.index("constraints: all constraints met")
    assert lines[at + 1:at + 5] == [
        "what you could run instead, measured in the same job on this CPU:",
        "  vs OpenVINO FP32: 1.50x faster (0.300 ms), accuracy -0.57 pts",
        "  vs ONNX Runtime FP32: 2.00x slower (0.100 ms), accuracy -0.57 pts",
        "  vs NNCF PTQ INT8 on OpenVINO: not measured (RuntimeError: no)"]
    skipped = {"skipped": "the target is not this machine"}
    assert "instead" not in demo.side_by_side(_report(references=skipped), 0.2, "http://h:1/ui")
