"""A data directory of the one-model layout (as agents before several models per device
left it) is moved into the per-model layout at start: the agent keeps its version, its
floor and its queued reports, applications keep ``DIR/current/model.onnx``, and a move cut
short at any step finishes at the next start with the same result."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge_agent import layout
from edge_agent.agent import Agent
from edge_agent.recovery import recover
from edge_agent.serve import InferenceServer
from edge_agent.store import Store
from hadmc_core.delta import load_public
from tests.edge_agent.conftest import cycle
from tests.edge_agent.fakes import CREDENTIAL, DEVICE_ID, FakeServer

REPORT = {"kind": "updates", "body": {"version_id": 2, "rollout_id": 1, "ok": True,
                                      "phase": "done", "reason": None, "p50_ms": 1.0,
                                      "p95_ms": 1.5, "bytes_downloaded": 10}}


def old_layout(root: Path, fake: FakeServer, held: list[int], current: int | None,
               state: dict[str, Any]) -> None:
    """What a one-model agent left: ``versions/<vid>/``, ``current -> versions/<vid>``,
    ``state.json`` with the one model's fields."""
    (root / "staging").mkdir(parents=True)
    os.chmod(root, 0o700)
    (root / "credentials.json").write_text(json.dumps(
        {"device_id": DEVICE_ID, "credential": CREDENTIAL, "server_url": "http://fake"}))
    (root / "server.pub").write_text(fake.public_pem)
    (root / "versions").mkdir()
    for vid in held:
        d = root / "versions" / str(vid)
        d.mkdir()
        v = fake.versions[vid]
        (d / "model.onnx").write_bytes(v.onnx)
        (d / "manifest.json").write_bytes(v.manifest)
        (d / "probe.npz").write_bytes(v.probe or b"")
    if current is not None:
        os.symlink(f"versions/{current}", root / "current")
    (root / "state.json").write_text(json.dumps(
        {"highest": {}, "active": None, "previous": None, "pending_reports": [],
         "switching": None, "probation": None, **state}))


@pytest.fixture
def published(fake: FakeServer, models: dict[str, bytes]) -> FakeServer:
    for vid in (1, 2, 3):
        fake.publish(vid, vid, models[f"v{vid}"])
    return fake


def on_two(root: Path, fake: FakeServer) -> None:
    old_layout(root, fake, [1, 2], 2, {"highest": {"model-1": 2}, "active": 2, "previous": 1,
                                       "pending_reports": [REPORT]})


def test_an_agent_started_on_the_old_layout_keeps_working(
        published: FakeServer, make_agent: Callable[..., Agent], tmp_path: Path,
        models: dict[str, bytes]) -> None:
    fake, root = published, tmp_path / "agent"
    on_two(root, fake)
    a = make_agent()
    assert not (root / "versions").exists()
    assert os.readlink(root / "current") == "models/model-1/current"
    assert os.readlink(root / "models" / "model-1" / "current") == "versions/2"
    assert (root / "current" / "model.onnx").read_bytes() == models["v2"]  # the same path
    assert a.store.model("model-1").held() == [1, 2]
    st = json.loads((root / "state.json").read_text())
    assert (st["layout"], st["primary"], st["highest"]) == (2, "model-1", {"model-1": 2})
    assert (st["models"]["model-1"]["active"], st["models"]["model-1"]["previous"]) == (2, 1)
    assert "active" not in st and st["pending_reports"] == [REPORT]

    a.server = InferenceServer(a.runtime, 0).start()
    x = np.ones((1, 64), np.float32)
    r = httpx.post(f"http://127.0.0.1:{a.server.port}/v1/infer", json={"input": x.tolist()})
    assert r.status_code == 200 and r.json()["version_id"] == 2
    a.send_reports()
    assert fake.reports == [REPORT["body"]]  # queued by the old agent, sent by the new one
    fake.want(3)  # a server that answers in the one-model form
    cycle(a)
    assert a.store.current_vid() == 3 and "delta" in fake.bytes_sent
    assert a.store.model("model-1").held() == [2, 3]
    assert fake.reports[-1]["model"] == "model-1" and fake.reports[-1]["ok"]


def test_an_interrupted_switch_of_the_old_layout_is_finished(
        published: FakeServer, make_agent: Callable[..., Agent], tmp_path: Path) -> None:
    """Killed after ``current`` moved to version 2 and before state.json said so."""
    fake, root = published, tmp_path / "agent"
    switching = {"version_id": 2, "model": "model-1", "version": 2,
                 "reports": [REPORT]}
    old_layout(root, fake, [1, 2], 2, {"highest": {"model-1": 1}, "active": 1,
                                       "switching": switching})
    a = make_agent()
    assert (a.state.active, a.state.previous, a.state.highest) == (2, 1, {"model-1": 2})
    assert a.state.pending_reports == [REPORT] and a.store.current_vid() == 2


def test_an_old_directory_without_a_version(published: FakeServer, tmp_path: Path,
                                            make_agent: Callable[..., Agent]) -> None:
    fake, root = published, tmp_path / "agent"
    old_layout(root, fake, [], None, {})
    a = make_agent()
    assert not (root / "versions").exists() and not (root / "current").exists()
    assert a.state.models == {} and a.state.primary is None
    fake.want(1)
    cycle(a)
    assert a.store.current_vid() == 1 and a.state.primary == "model-1"


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (staging left out): link target, directory, or the hash
    of the file (state.json parsed, so key order does not matter)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel.startswith("staging/"):
                continue
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            elif name == "state.json":
                out[rel] = json.dumps(json.loads(p.read_text()), sort_keys=True)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Cut(Exception):
    pass


def cut_after(monkeypatch: pytest.MonkeyPatch, n: int) -> list[int]:
    """Renames, replaces and new links fail from the ``n``-th on (as if the process had
    died there); returns the count of those calls made."""
    calls = [0]
    for name in ("rename", "replace", "symlink"):
        real = getattr(os, name)

        def op(*args: Any, _real: Callable[..., Any] = real, **kw: Any) -> Any:
            calls[0] += 1
            if calls[0] > n:
                raise Cut(f"cut at call {calls[0]}")
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, op)
    return calls


def test_a_move_cut_short_at_any_step_finishes_the_same(
        published: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = published
    key = load_public(fake.public_pem.encode())
    base = tmp_path / "old"
    on_two(base, fake)
    reference = tmp_path / "reference"
    shutil.copytree(base, reference, symlinks=True)
    with monkeypatch.context() as m:
        calls = cut_after(m, 10**6)
        assert layout.migrate(Store(reference)) == "model-1"
    steps = calls[0]
    assert steps == 6, steps  # 2 links (symlink + rename each), the versions, state.json
    assert layout.migrate(Store(reference)) is None  # once moved, a start moves nothing
    recover(Store(reference), key)
    want = snapshot(reference)
    assert want["current"] == "-> models/model-1/current" and "versions" not in want
    for n in range(steps):
        root = tmp_path / f"cut-{n}"
        shutil.copytree(base, root, symlinks=True)
        with monkeypatch.context() as m, pytest.raises(Exception, match="cut at call"):
            cut_after(m, n)
            layout.migrate(Store(root))
        assert layout.needs_migration(Store(root))
        st = recover(Store(root), key)  # the next start
        assert snapshot(root) == want, f"cut after {n} of {steps} steps"
        assert (st.active, st.previous, st.pending_reports) == (2, 1, [REPORT])
