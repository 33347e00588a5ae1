"""Geometry for the dashboard's inline SVG: the accuracy/latency plot of a compression
report and stacked progress bars. The templates draw; nothing here writes markup."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Rollout device statuses in the order bars stack them, with the CSS class of each.
STATUS_ORDER = ("succeeded", "assigned", "failed", "cancelled", "rolled_back", "pending",
                "skipped")


@dataclass
class Point:
    x: float
    y: float
    label: str
    kind: str  # baseline | chosen | tried | accuracy
    latency_ms: float
    accuracy: float


@dataclass
class Plot:
    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    points: list[Point] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    value = start
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def report_points(report: dict[str, Any]) -> list[tuple[str, str, float, float]]:
    """(label, kind, latency ms, validation accuracy %) of the baseline and every
    candidate that has both numbers."""
    out = []
    base = report.get("baseline") or {}
    lat, acc = _number(base.get("latency_ms")), _number(base.get("val_accuracy"))
    if lat is not None and acc is not None:
        out.append(("baseline", "baseline", lat, acc))
    for cand in report.get("candidates") or []:
        if not isinstance(cand, dict):
            continue
        lat = _number(cand.get("latency_ms"))
        if lat is None:
            lat = _number(cand.get("estimated_ms"))
        acc = _number(cand.get("val_accuracy"))
        if lat is None or acc is None:
            continue
        kind = "chosen" if cand.get("chosen") else \
            ("accuracy" if cand.get("status") == "accuracy" else "tried")
        out.append((str(cand.get("id", "?")), kind, lat, acc))
    return out


def scatter(report: dict[str, Any], width: int = 640, height: int = 320) -> Plot | None:
    """Validation accuracy against latency for the baseline and each candidate; None when
    the report has no such numbers."""
    data = report_points(report)
    if not data:
        return None
    left, top, right, bottom = 64, 16, 24, 48
    plot = Plot(width, height, left, top, width - left - right, height - top - bottom)
    lats, accs = [d[2] for d in data], [d[3] for d in data]
    xt = _nice_ticks(min(lats) * 0.95, max(lats) * 1.05)
    yt = _nice_ticks(min(accs) - 1, max(accs) + 1)

    def sx(v: float) -> float:
        return round(left + (v - xt[0]) / (xt[-1] - xt[0]) * plot.plot_w, 1)

    def sy(v: float) -> float:
        return round(top + plot.plot_h - (v - yt[0]) / (yt[-1] - yt[0]) * plot.plot_h, 1)

    plot.x_ticks = [(sx(v), _fmt(v)) for v in xt]
    plot.y_ticks = [(sy(v), _fmt(v)) for v in yt]
    order = {"tried": 0, "accuracy": 0, "baseline": 1, "chosen": 2}  # chosen drawn last
    for label, kind, lat, acc in sorted(data, key=lambda d: order[d[1]]):
        plot.points.append(Point(sx(lat), sy(acc), label, kind, lat, acc))
    return plot


@dataclass
class Segment:
    status: str
    count: int
    x: float
    width: float


def stacked(counts: dict[str, int], width: float = 100.0) -> list[Segment]:
    """A bar of ``width`` split by status (in ``STATUS_ORDER``), for an SVG whose
    viewBox is ``width`` wide."""
    total = sum(counts.values())
    segments: list[Segment] = []
    x = 0.0
    for status in (*STATUS_ORDER, *sorted(set(counts) - set(STATUS_ORDER))):
        n = counts.get(status, 0)
        if n <= 0 or total == 0:
            continue
        w = width * n / total
        segments.append(Segment(status, n, round(x, 3), round(w, 3)))
        x += w
    return segments
