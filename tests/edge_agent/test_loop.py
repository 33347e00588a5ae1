"""The loop of periodic operations: failures are logged at a limited rate, never stop the
loop; network errors back off with jitter."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from edge_agent.agent import Agent
from edge_agent.client import Backoff
from edge_agent.errors import NetworkError, ServerError
from edge_agent.loop import Loop, PeriodicOperation, RateLimitedLog
from tests.edge_agent.fakes import FakeServer


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_backoff_full_jitter_grows_to_cap() -> None:
    b = Backoff(base=1.0, cap=8.0, rng=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    b.reset()
    assert b.next_delay() == 1
    jittered = Backoff(base=1.0, cap=8.0)
    assert all(0 <= jittered.next_delay() <= 8 for _ in range(50))


def test_failing_operations_never_stop_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    clock, calls = Clock(), {"bad": 0, "net": 0, "good": 0}
    errors = RateLimitedLog(interval=60, clock=clock)

    def bad() -> None:
        calls["bad"] += 1
        raise RuntimeError("boom")

    def net() -> None:
        calls["net"] += 1
        raise NetworkError("connection refused")

    def good() -> None:
        calls["good"] += 1

    ops = [PeriodicOperation(n, f, 1.0, Backoff(1.0, 30.0, rng=lambda: 1.0), errors)
           for n, f in (("bad", bad), ("net", net), ("good", good))]
    loop = Loop(ops, clock=clock)
    with caplog.at_level(logging.WARNING, logger="edge_agent.loop"):
        for _ in range(40):
            loop.run_once()
            clock.t += 1.0
    assert calls["good"] == 40 and calls["bad"] == 40
    assert calls["net"] == 6  # backoff 1, 2, 4, 8, 16 s: 1+1+2+4+8+16 = 32 s < 40 s
    boom = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(boom) == 1  # 40 failures in 40 s, one line per 60 s
    clock.t += 61
    loop.run_once()
    boom = [r.getMessage() for r in caplog.records if "boom" in r.getMessage()]
    assert len(boom) == 2 and "repeated 39 more times" in boom[-1]


def test_agent_operations_survive_a_down_server(fake: FakeServer,
                                                make_agent: Callable[..., Agent],
                                                models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.fail |= {"heartbeat", "desired", "profile"}
    for op in a.loop.operations:
        op.backoff.rng = lambda: 0.0
    for _ in range(3):
        a.loop.run_once()
        for op in a.loop.operations:
            op.next_run = 0.0
    assert {op.name: op.failures for op in a.loop.operations}["heartbeat"] == 3
    fake.fail.clear()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    for _ in range(3):
        a.loop.run_once()
        for op in a.loop.operations:
            op.next_run = 0.0
    assert a.state.active == 1 and fake.heartbeats[-1]["current_version_id"] == 1
    assert fake.profiles and fake.reports[-1]["ok"]


def test_revoked_credential_keeps_reports(fake: FakeServer, make_agent: Callable[..., Agent],
                                          models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    a.poll()
    a.update()
    a.client.credential = "revoked"
    with pytest.raises(ServerError):
        a.send_reports()
    assert len(a.store.load_state().pending_reports) == 2  # update + latency, kept on disk
