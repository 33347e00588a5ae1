"""The dashboard's parts that need no browser: session cookies, redirects after login,
forms turned into API bodies, and the geometry of the plot and bars."""

from __future__ import annotations

import pytest

from cloud_service.schemas import JobCreate
from cloud_service.schemas_rollouts import RolloutCreate
from cloud_service.ui import charts, session
from cloud_service.ui.jobs import FormError, body_from_form
from cloud_service.ui.rollouts import spec_from_form

KEY, OTHER = b"k" * 32, b"o" * 32


def test_a_cookie_reads_back_only_with_its_key_unaltered_and_young() -> None:
    value = session.encode(KEY, {"t": "abc", "c": "csrf", "iat": 1_000})
    assert session.decode(KEY, value, now=1_010) == {"t": "abc", "c": "csrf", "iat": 1_000}
    assert session.decode(OTHER, value, now=1_010) is None
    body, mac = value.split(".")
    forged = session.encode(OTHER, {"t": "other", "c": "csrf", "iat": 1_000}).split(".")[0]
    assert session.decode(KEY, f"{forged}.{mac}", now=1_010) is None
    assert session.decode(KEY, value, now=1_000 + session.SESSION_SECONDS) is None
    assert session.decode(KEY, value, now=999) is None  # issued in the future
    for junk in ("", "a", "a.b.c", "!!.??", f"{body}.", None):
        assert session.decode(KEY, junk, now=1_010) is None


@pytest.mark.parametrize("target,expected", [
    ("/ui/jobs/3", "/ui/jobs/3"), ("/ui?tag=line-1", "/ui?tag=line-1"),
    ("https://evil.example/ui", "/ui"), ("//evil.example/ui", "/ui"),
    ("/ui//evil.example", "/ui"), ("/ui\\\\evil", "/ui"), ("/v1/jobs", "/ui"),
    ("/ui/login?next=/ui", "/ui"), (None, "/ui"), ("", "/ui")],
    ids=["page", "query", "other-site", "scheme-relative", "double-slash", "backslash",
         "api", "login-loop", "none", "empty"])
def test_after_login_only_dashboard_pages(target: str | None, expected: str) -> None:
    assert session.safe_next(target) == expected


def test_the_job_form_becomes_the_api_body() -> None:
    body = body_from_form({"model_id": "3", "dataset_id": "4", "profile": "x86-avx2",
                           "max_accuracy_drop": "0.5", "latency_budget_ms": "",
                           "quantize": "on",
                           "config": '{"quantize": {"keep_ladder": [0]}, "measure": {"runs": 5}}'})
    job = JobCreate.model_validate(body)
    assert job.constraints == {"max_accuracy_drop": 0.5}
    assert job.config == {"prune": {"enabled": False}, "distill": {"enabled": False},
                          "quantize": {"keep_ladder": [0]}, "measure": {"runs": 5}}
    with pytest.raises(FormError, match="not JSON"):
        body_from_form({"config": "{"})
    with pytest.raises(FormError, match="JSON object"):
        body_from_form({"config": "[1]"})
    with pytest.raises(FormError, match="not a number"):
        body_from_form({"max_accuracy_drop": "half"})


def test_the_rollout_form_becomes_the_api_body() -> None:
    spec = spec_from_form({"version_id": "7", "selector": "tags", "tags": "line-1, line-2",
                           "waves": "10 50,100", "rollback_on_abort": "on",
                           "wave_timeout_seconds": "60"})
    body = RolloutCreate.model_validate(spec)
    assert body.selector.tags == ["line-1", "line-2"] and body.waves == [10, 50, 100]
    assert body.rollback_on_abort and not body.replace_model
    assert body.wave_timeout_seconds == 60 and body.success_threshold == 0.95
    ids = RolloutCreate.model_validate(spec_from_form(
        {"version_id": "7", "selector": "device_ids", "device_ids": "3,5", "waves": "100"}))
    assert ids.selector.device_ids == [3, 5] and not ids.rollback_on_abort


def test_the_plot_puts_better_accuracy_higher_and_slower_models_right() -> None:
    report = {"baseline": {"latency_ms": 2.0, "val_accuracy": 90.0},
              "candidates": [
                  {"id": "c1-q0", "latency_ms": 1.0, "val_accuracy": 89.5, "chosen": True},
                  {"id": "c2-q0", "latency_ms": 0.5, "val_accuracy": 80.0,
                   "status": "accuracy"},
                  {"id": "c3-q0", "latency_ms": None, "estimated_ms": 0.8,
                   "val_accuracy": 85.0},
                  {"id": "broken", "latency_ms": "n/a", "val_accuracy": None}]}
    plot = charts.scatter(report)
    assert plot is not None
    points = {p.label: p for p in plot.points}
    assert set(points) == {"baseline", "c1-q0", "c2-q0", "c3-q0"}
    assert points["c1-q0"].kind == "chosen" and points["c2-q0"].kind == "accuracy"
    assert points["baseline"].x > points["c1-q0"].x > points["c2-q0"].x
    assert points["baseline"].y < points["c1-q0"].y < points["c2-q0"].y  # SVG y grows down
    inside = all(plot.left <= p.x <= plot.left + plot.plot_w
                 and plot.top <= p.y <= plot.top + plot.plot_h for p in plot.points)
    assert inside
    assert plot.points[-1].label == "c1-q0"  # the chosen one is drawn on top
    assert charts.scatter({"schema": "test"}) is None


def test_a_bar_is_split_by_status_in_a_fixed_order() -> None:
    segments = charts.stacked({"pending": 2, "succeeded": 1, "failed": 1})
    assert [(s.status, s.count) for s in segments] == [("succeeded", 1), ("failed", 1),
                                                        ("pending", 2)]
    assert [s.x for s in segments] == [0, 25, 50]
    assert sum(s.width for s in segments) == pytest.approx(100)
    assert charts.stacked({}) == []
