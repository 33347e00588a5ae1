"""Commit after health: a new version stays on probation for ``health_window_seconds``
after the switch, and only then counts as a success. Each model has its own probation.

During the window the agent checks, every ``health_check_seconds``:

- served requests: the share of inference requests that failed on the new version
  (``health_max_error_rate``);
- the probe: the version still gives the probe's expected outputs;
- latency: the median p50 measured during the window against the p50 of the version it
  replaced, timed on this device just before the switch (``health_max_latency_ratio``).

A failed check rolls back by itself (``current`` goes back to the previous version) and
reports ``phase: "health"`` with the reason; at the end of the window the version is
committed: the anti-rollback floor rises and the ``done`` (or ``rollback``) report goes out.
The probation record lives in ``state.json``, so a SIGKILL during the window restarts still
on probation (the window's end is wall-clock time), or, when the failure was already
decided, finishes the rollback (``recover``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

from edge_agent.errors import AgentError, SmokeTestError
from edge_agent.settings import AgentSettings
from edge_agent.smoke import load_probe, smoke_test
from edge_agent.store import MODEL_FILE, PROBE_FILE, AgentState, ModelStore, Store

log = logging.getLogger(__name__)


def time_held(store: ModelStore, vid: int | None, runs: int, threads: int) -> float | None:
    """p50 of a held version of the model on its own probe (None when it cannot be
    timed)."""
    if vid is None:
        return None
    d = store.version_dir(vid)
    try:
        probe = load_probe((d / PROBE_FILE).read_bytes()) if (d / PROBE_FILE).exists() \
            else None
        return smoke_test(d / MODEL_FILE, probe, runs, threads).p50_ms
    except (AgentError, OSError) as e:
        log.info("cannot time version %s for the health baseline: %s", vid, e)
        return None


def new_probation(*, report: dict[str, Any], model: str, version: int, previous: int | None,
                  window: float, baseline_p50: float | None, p95_ms: float | None,
                  p99_ms: float | None, rollback: bool, now: float | None = None
                  ) -> dict[str, Any]:
    """The probation record kept in ``state.json`` while the health window runs."""
    return {"version_id": report["version_id"], "rollout_id": report.get("rollout_id"),
            "model": model, "version": version, "previous": previous, "rollback": rollback,
            "until": (time.time() if now is None else now) + window,
            "baseline_p50": baseline_p50, "p50s": [report.get("p50_ms")], "p95": p95_ms,
            "p99": p99_ms,
            "report": report, "failed": None}


def roll_back(store: Store, st: AgentState, key: str, usable: Callable[[int], bool]) -> None:
    """Finish a failed probation of model ``key``: its ``current`` back to the previous
    version when it is held and ``usable``; the failed version stays held as the previous
    one."""
    ms = st.model(key)
    p = ms.probation
    if not p:
        return
    vid, prev = int(p["version_id"]), p.get("previous")
    if ms.active == vid and prev is not None and usable(int(prev)):
        store.model(key).switch(int(prev))
        ms.active, ms.previous = int(prev), vid
        log.warning("%s version %d failed its health window; back on version %d", key, vid,
                    prev, extra={"version_id": vid, "model": key})
    ms.probation = None
    store.save_state(st)


class HealthWatch:
    """Runs the checks of each model's version on probation (see the module docstring)."""

    def __init__(self, *, settings: AgentSettings, store: Store, state: AgentState,
                 served: Callable[[int], tuple[int, int]],
                 wall: Callable[[], float] = time.time) -> None:
        self.settings, self.store, self.state = settings, store, state
        self.served, self.wall = served, wall
        self.offset: dict[int, tuple[int, int]] = {}

    def check(self) -> dict[str, str]:
        """One check of every model on probation: ``{model: "failed" | "committed"}`` for
        those decided now (the others stay on probation)."""
        out = {}
        for key, ms in list(self.state.models.items()):
            p = ms.probation
            if not p:
                continue
            problem = self._problem(key, p)
            if problem is not None:
                self.fail(key, p, problem)
                out[key] = "failed"
            elif self.wall() >= float(p["until"]):
                self.commit(key, p)
                out[key] = "committed"
        return out

    def _problem(self, key: str, p: dict[str, Any]) -> str | None:
        s, vid = self.settings, int(p["version_id"])
        start = self.offset.setdefault(vid, self.served(vid))
        total, errors = (a - b for a, b in zip(self.served(vid), start, strict=True))
        if total and errors / total > s.health_max_error_rate:
            return (f"{errors} of {total} served inference requests failed on this version "
                    f"(health_max_error_rate {s.health_max_error_rate:g})")
        d = self.store.model(key).version_dir(vid)
        try:
            probe = load_probe((d / PROBE_FILE).read_bytes()) if (d / PROBE_FILE).exists() \
                else None
            result = smoke_test(d / MODEL_FILE, probe, s.smoke_runs, s.threads)
        except SmokeTestError as e:
            return f"probe check failed: {e}"
        except OSError as e:
            return f"the version's files cannot be read: {e}"
        p["p50s"] = [x for x in p.get("p50s", []) if x is not None] + [result.p50_ms]
        p["p95"], p["p99"] = result.p95_ms, result.p99_ms
        self.store.save_state(self.state)
        base, ratio = p.get("baseline_p50"), s.health_max_latency_ratio
        p50 = statistics.median(p["p50s"])
        if base and ratio > 0 and p50 > base * ratio:
            return (f"p50 latency {p50:.3f} ms is {p50 / base:.2f}x that of the version "
                    f"before it ({base:.3f} ms; health_max_latency_ratio {ratio:g})")
        return None

    def commit(self, key: str, p: dict[str, Any]) -> None:
        st = self.state
        p50s = [x for x in p.get("p50s", []) if x is not None]
        p50 = round(statistics.median(p50s), 4) if p50s else None
        report = {**p["report"], "ok": True, "phase": "rollback" if p.get("rollback")
                  else "done", "reason": None, "p50_ms": p50, "p95_ms": p.get("p95")}
        st.highest[p["model"]] = max(st.highest.get(p["model"], 0), int(p["version"]))
        st.pending_reports += [{"kind": "updates", "body": report},
                               {"kind": "latency", "body": {"version_id": p["version_id"],
                                                            "p50_ms": p50,
                                                            "p99_ms": p.get("p99")}}]
        st.model(key).probation = None
        self.store.save_state(st)
        log.info("%s version %s committed after its health window (p50 %s ms)", key,
                 p["version_id"], p50, extra={"version_id": p["version_id"], "model": key})

    def fail(self, key: str, p: dict[str, Any], reason: str) -> None:
        """Record the decision and the report first, then switch back (``recover``
        finishes the switch after a crash in between)."""
        st = self.state
        p["failed"] = reason
        st.pending_reports.append({"kind": "updates", "body": {
            **p["report"], "ok": False, "phase": "health", "reason": reason[:1000],
            "p50_ms": None, "p95_ms": None}})
        self.store.save_state(st)
        mstore = self.store.model(key)
        roll_back(self.store, st, key, lambda v: mstore.version_dir(v).is_dir())
