"""Fixtures: a strict fake server, tiny models, and agents wired to the fake in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent import agent as agent_mod
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from tests.edge_agent.fakes import TOKEN, FakeServer, mlp_onnx, mock_transport

FAKE_PROFILE = {"name": "test-device", "description": "test", "isa": "x86_64",
                "accelerator": "cpu", "cores": 1, "memory_gb": 1.0, "peak_gops": {"fp32": 10.0},
                "memory_bandwidth_gbs": 1.0, "precisions": ["fp32"],
                "runtimes": ["onnxruntime-cpu-1.20"], "source": "test"}


@pytest.fixture(scope="session")
def models() -> dict[str, bytes]:
    return {"v1": mlp_onnx(0), "v2": mlp_onnx(0, scale=0.001), "v3": mlp_onnx(0, scale=0.002)}


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    assert server.unexpected == [], f"unexpected requests: {server.unexpected}"


@pytest.fixture
def settings(tmp_path: Path) -> Callable[..., AgentSettings]:
    def make(**kw: Any) -> AgentSettings:
        base: dict[str, Any] = dict(server_url="http://fake", enrollment_token=TOKEN,
                                    name="dev-1", data_dir=tmp_path / "agent", serve_port=0,
                                    latency_table=False, smoke_runs=5, download_attempts=3,
                                    backoff_base_seconds=0.01, retry_failed_seconds=3600,
                                    health_window_seconds=0)  # test_health.py: the window
        base.update(kw)
        return AgentSettings(**base)

    return make


@pytest.fixture(autouse=True)
def _quick_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """Detecting the real profile measures memory bandwidth; tests of it live elsewhere."""
    monkeypatch.setattr(agent_mod, "device_profile", lambda name: {**FAKE_PROFILE, "name": name})


@pytest.fixture
def make_agent(fake: FakeServer, settings: Callable[..., AgentSettings]
               ) -> Iterator[Callable[..., Agent]]:
    made: list[Agent] = []

    def make(**kw: Any) -> Agent:
        a = Agent(settings(**kw), transport=mock_transport(fake), sleep=lambda s: None)
        a.start()
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def cycle(a: Agent) -> None:
    """One pass of poll, update and report, in loop order."""
    a.poll()
    a.update()
    a.send_reports()
