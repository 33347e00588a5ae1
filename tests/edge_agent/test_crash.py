"""Crash safety: SIGKILL at each step of an update, then a restart; the agent comes back on
the old or the new version, verified, never a mixture, with staging emptied."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.recovery import recover, verify_held
from tests.edge_agent.conftest import cycle
from tests.edge_agent.fakes import FakeServer, LoopbackServer

ROOT = Path(__file__).resolve().parents[2]
POINTS = ["mid-download", "downloaded", "applied", "smoked", "install-rename", "installed",
          "switching", "switched", "pruning", "trash"]


@pytest.fixture
def loopback(fake: FakeServer) -> Iterator[LoopbackServer]:
    srv = LoopbackServer(fake)
    yield srv
    srv.close()


def crash_at(point: str, data_dir: Path, url: str) -> int:
    env = {**os.environ, "CRASH_AT": point, "HADMC_AGENT_SERVER_URL": url,
           "HADMC_AGENT_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "tests.edge_agent.crash_child"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc.returncode


def assert_consistent(a: Agent) -> None:
    cur = a.store.current_vid()
    assert cur in (2, 3)
    assert a.state.active == cur
    assert verify_held(a.store.model("model-1"), cur, a.key) is not None
    assert (a.store.current / "model.onnx").is_file()
    assert list(a.store.staging.iterdir()) == []
    assert not list(a.store.root.glob(".*"))  # no half-written state or link
    assert set(a.store.model("model-1").held()) <= {1, 2, 3}


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_during_update_recovers(point: str, fake: FakeServer,
                                        make_agent: Callable[..., Agent],
                                        loopback: LoopbackServer,
                                        models: dict[str, bytes]) -> None:
    """On version 2 with 1 kept for rollback; killed while updating to 3."""
    a = make_agent()
    for vid in (1, 2, 3):
        fake.publish(vid, vid, models[f"v{vid}"])
    for vid in (1, 2):
        fake.want(vid)
        cycle(a)
    a.close()
    fake.want(3)
    if point == "mid-download":
        fake.drop_after["delta"] = 2000
    crash_at(point, a.store.root, loopback.url)
    b = make_agent()  # start = recover
    assert_consistent(b)
    expect_new = POINTS.index(point) >= POINTS.index("switched")
    assert b.store.current_vid() == (3 if expect_new else 2)
    cycle(b)
    assert_consistent(b)
    assert b.store.current_vid() == 3 and b.store.model("model-1").held() == [2, 3]
    ok = [r for r in fake.reports if r["version_id"] == 3 and r["ok"]]
    assert len(ok) == 1, fake.reports


def test_corrupt_current_falls_back_to_previous(fake: FakeServer,
                                                make_agent: Callable[..., Agent],
                                                models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.publish(2, 2, models["v2"])
    for vid in (1, 2):
        fake.want(vid)
        cycle(a)
    model = a.store.model("model-1").version_dir(2) / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    (a.store.staging / "v9-leftover").mkdir()
    (a.store.staging / "v9-leftover" / "model.onnx").write_bytes(b"half")
    st = recover(a.store, a.key)
    assert a.store.current_vid() == 1 and st.active == 1 and st.previous is None
    assert a.store.model("model-1").held() == [1] and list(a.store.staging.iterdir()) == []


def test_nothing_verifies_removes_current(fake: FakeServer,
                                          make_agent: Callable[..., Agent],
                                          models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    cycle(a)
    (a.store.model("model-1").version_dir(1) / "manifest.json").write_text("{}")
    b = make_agent()
    assert b.state.active is None and not b.store.model("model-1").current.is_symlink()
    assert not b.store.current.exists()  # the primary model's path names nothing
    cycle(b)  # the next update fetches it again in full
    assert b.store.current_vid() == 1
    assert fake.bytes_sent["model.onnx"] == 2 * len(models["v1"])
