"""Commit after health, against the strict fake: a new version stays on probation, commits
at the end of the window, rolls back by itself when served requests fail, its probe stops
matching or it is much slower than the version before it; probation survives a restart."""

from __future__ import annotations

from collections.abc import Callable

from edge_agent.agent import Agent
from tests.edge_agent.conftest import cycle
from tests.edge_agent.fakes import FakeServer, mlp_onnx

MakeAgent = Callable[..., Agent]
WINDOW = 60.0


def on_probation(fake: FakeServer, make_agent: MakeAgent, models: dict[str, bytes],
                 v2: bytes | None = None, **kw: object) -> tuple[Agent, list[float]]:
    """An agent committed on v1 (window 0 for it), then switched to v2 with a window; its
    health clock is ``clock[0]``."""
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    cycle(a)
    a.close()
    a = make_agent(health_window_seconds=WINDOW, health_check_seconds=1, **kw)
    clock = [1000.0]
    a.health.wall = lambda: clock[0]
    fake.publish(2, 2, v2 or models["v2"])
    fake.want(2, rollout_id=7)
    del fake.reports[:]
    a.poll()
    a.update()
    a.send_reports()
    a.state.probation["until"] = clock[0] + WINDOW  # type: ignore[index]
    return a, clock


def test_commit_only_after_the_window(fake: FakeServer, make_agent: MakeAgent,
                                      models: dict[str, bytes]) -> None:
    a, clock = on_probation(fake, make_agent, models)
    assert a.store.current_vid() == 2 and a.state.active == 2 and a.state.previous == 1
    assert [(r["phase"], r["ok"], r["rollout_id"]) for r in fake.reports] == \
        [("probation", True, 7)]
    assert a.state.highest["model-1"] == 1  # the floor waits for the commit
    assert a.state.probation is not None and a.state.probation["baseline_p50"] > 0
    a.check_health()
    a.send_reports()
    assert len(fake.reports) == 1 and a.state.probation is not None  # window still open
    clock[0] += WINDOW
    a.check_health()
    a.send_reports()
    assert a.state.probation is None and a.state.highest["model-1"] == 2
    done = fake.reports[-1]
    assert (done["phase"], done["ok"], done["version_id"]) == ("done", True, 2)
    assert done["p50_ms"] > 0 and fake.latency[-1]["version_id"] == 2
    assert a.store.current_vid() == 2


def test_failed_served_requests_roll_back(fake: FakeServer, make_agent: MakeAgent,
                                         models: dict[str, bytes]) -> None:
    a, _ = on_probation(fake, make_agent, models)
    a.check_health()  # records where the counters stood at the switch
    for failed in (False, True, True):
        a.runtime._count(2, failed=failed)
    a.check_health()
    a.send_reports()
    assert a.store.current_vid() == 1 and a.state.active == 1 and a.state.previous == 2
    bad = fake.reports[-1]
    assert (bad["phase"], bad["ok"], bad["version_id"]) == ("health", False, 2)
    assert "2 of 3 served inference requests failed" in bad["reason"]
    assert a.state.probation is None and a.state.highest["model-1"] == 1
    a.poll()
    a.update()  # the server still says v2: not tried again before retry_failed_seconds
    assert a.store.current_vid() == 1


def test_much_slower_version_rolls_back(fake: FakeServer, make_agent: MakeAgent,
                                        models: dict[str, bytes]) -> None:
    slow = mlp_onnx(0, scale=0.001, hidden=4096)  # same inputs and outputs, far more work
    a, _ = on_probation(fake, make_agent, models, v2=slow, health_max_latency_ratio=1.5)
    a.check_health()
    a.send_reports()
    assert a.store.current_vid() == 1
    assert "health_max_latency_ratio 1.5" in fake.reports[-1]["reason"]


def test_probation_survives_a_restart_and_a_decided_failure_finishes(
        fake: FakeServer, make_agent: MakeAgent, models: dict[str, bytes]) -> None:
    a, _ = on_probation(fake, make_agent, models)
    a.close()
    b = make_agent(health_window_seconds=WINDOW)  # a restart: recover() at start
    assert b.state.probation is not None and b.state.active == 2
    assert b.store.current_vid() == 2
    # the failure was decided and saved, then the process died before switching back
    b.state.probation["failed"] = "probe check failed"
    b.store.save_state(b.state)
    b.close()
    c = make_agent(health_window_seconds=WINDOW)
    assert c.store.current_vid() == 1 and c.state.active == 1 and c.state.probation is None
    assert c.store.model("model-1").held() == [1, 2]
