"""Several models per device with real processes: ``hadmc serve`` (PostgreSQL, its scheduler
thread) and two ``hadmc-agent`` processes on loopback.

A fresh agent receives a detector and a classifier from two rollouts running at once and
serves both at ``/v1/models/{name}/infer`` (and at their stable file paths); a new
classifier version reaches it while the detector stays untouched. An agent started on a
data directory in the one-model layout (as an agent from before several models per device
left it: its version files, ``current`` link and ``state.json``, with the server told so
by that agent's reports) moves it at start, keeps serving ``DIR/current/model.onnx`` and
``/v1/infer``, takes the detector's next version and then a classifier beside it. About
20 s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.store import Store
from hadmc_core.hal.onnxwrite import mlp
from tests.e2e.helpers import (
    Agent,
    Server,
    database,
    free_port,
    local_profile,
    ok,
    rollout,
    rollout_state,
    server_env,
    start_server,
    stop,
    wait_for,
)

pytestmark = pytest.mark.slow
__all__ = ["database"]  # the module-scoped fixture
DETECTOR, CLASSIFIER = [64, 128, 4], [32, 48, 3]
ONNX = {"d1": mlp(DETECTOR, 1), "d2": mlp(DETECTOR, 2), "c1": mlp(CLASSIFIER, 3),
        "c2": mlp(CLASSIFIER, 4)}


@dataclass
class Setup:
    s: Server
    vids: dict[str, int]
    models: dict[str, int]  # "detector" / "classifier" -> model id
    token: str
    tmp: Path

    def line(self, name: str) -> str:
        return f"model-{self.models[name]}"


def enrolled(s: Server, name: str) -> int | None:
    """The device id of agent ``name`` once it reported its profile."""
    return next((d["id"] for d in ok(s.admin.get("/v1/devices"))["data"]
                 if d["name"] == name and d["profile"]), None)


@pytest.fixture(scope="module")
def setup(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("models")
    s = start_server(server_env(database, tmp, HADMC_ROLLOUT_INTERVAL_SECONDS="0.3",
                                HADMC_EMBEDDED_WORKER="false"), tmp)
    try:
        models, vids = {}, {}
        for name, first in (("detector", "d1"), ("classifier", "c1")):
            models[name] = ok(s.admin.post("/v1/models", params={"name": name, "format": "onnx"},
                                           content=ONNX[first], headers=s.octet), 201)["id"]
        for key, data in ONNX.items():
            mid = models["detector" if key.startswith("d") else "classifier"]
            vids[key] = ok(s.admin.post(f"/v1/models/{mid}/versions",
                                        params={"profile": local_profile()}, content=data,
                                        headers=s.octet), 201)["id"]
        token = ok(s.admin.post("/v1/enrollment-tokens", json={"max_uses": 2}), 201)["token"]
        yield Setup(s, vids, models, token, tmp)
    finally:
        print(s.log.read_text()[-3000:])
        s.admin.close()
        stop(s.proc)


def serving(a: Agent) -> str:
    """Start ``a`` with its inference endpoint on a free port; returns the base URL."""
    port = free_port()
    a.cmd[a.cmd.index("--serve-port") + 1] = str(port)
    a.start()
    return f"http://127.0.0.1:{port}"


def infer(url: str, path: str, width: int) -> tuple[dict, np.ndarray]:
    x = np.random.default_rng(width).standard_normal((2, width)).astype(np.float32)
    r = httpx.post(url + path, json={"input": x.tolist()}, timeout=30)
    assert r.status_code == 200, (path, r.text)
    return r.json(), x


def expected(key: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(ONNX[key], providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def runs(a: Agent, line: str) -> int | None:
    return Store(a.dir).model(line).current_vid()


def test_one_agent_receives_two_models_and_serves_both(setup: Setup) -> None:
    f, s = setup, setup.s
    a = Agent(0, s, f.token, f.tmp, HADMC_AGENT_LATENCY_TABLE="false")
    try:
        url = serving(a)
        dev = wait_for(lambda: enrolled(s, a.name), "the agent to enroll and report")
        pick = {"selector": {"device_ids": [dev]}}
        r_det = rollout(s, f.vids["d1"], [100], **pick)
        r_cls = rollout(s, f.vids["c1"], [100], **pick)  # at once: each model its own
        wait_for(lambda: rollout_state(s, r_det) == rollout_state(s, r_cls) == "completed",
                 "both rollouts to complete", 60)
        det, cls = f.line("detector"), f.line("classifier")
        assert (runs(a, det), runs(a, cls)) == (f.vids["d1"], f.vids["c1"])
        shown = ok(s.admin.get(f"/v1/devices/{dev}"))
        assert shown["multi_model"] is True
        assert {m["model"]: m["current_version_id"] for m in shown["models"]} == {
            det: f.vids["d1"], cls: f.vids["c1"]}

        assert a.state().primary == det  # the first installed (the first in the list)
        for path, key, width in ((f"/v1/models/{det}/infer", "d1", 64),
                                 ("/v1/models/classifier/infer", "c1", 32),
                                 ("/v1/infer", "d1", 64)):
            body, x = infer(url, path, width)
            assert body["version_id"] == f.vids[key], path
            np.testing.assert_allclose(body["outputs"]["y"], expected(key, x), rtol=1e-4)
        files = {m["model"]: m["path"] for m in httpx.get(f"{url}/v1/models").json()["models"]}
        assert files[cls] == str(a.dir / "models" / cls / "current" / "model.onnx")
        assert Path(files[cls]).read_bytes() == ONNX["c1"]

        kept = (a.dir / "models" / det / "versions" / str(f.vids["d1"])).stat().st_ino
        r = rollout(s, f.vids["c2"], [100], **pick)
        wait_for(lambda: rollout_state(s, r) == "completed", "the classifier's v2", 60)
        assert (runs(a, det), runs(a, cls)) == (f.vids["d1"], f.vids["c2"])
        assert (a.dir / "models" / det / "versions" / str(f.vids["d1"])).stat().st_ino == kept
        body, x = infer(url, f"/v1/models/{cls}/infer", 32)
        np.testing.assert_allclose(body["outputs"]["y"], expected("c2", x), rtol=1e-4)
    finally:
        a.stop()


def old_layout(f: Setup, root: Path, name: str) -> int:
    """What an agent from before several models left after installing the detector's v1:
    enrolled, ``versions/<id>/``, ``current -> versions/<id>``, the one-model state.json;
    its update report and heartbeat (no per-model fields) told the server."""
    s, vid = f.s, f.vids["d1"]
    reg = ok(httpx.post(f"{s.url}/v1/devices/register", json={
        "enrollment_token": f.token, "name": name}), 201)
    me = {"Authorization": f"Bearer {reg['credential']}"}
    (root / "staging").mkdir(parents=True)
    os.chmod(root, 0o700)
    (root / "credentials.json").write_text(json.dumps({
        "device_id": reg["device_id"], "credential": reg["credential"], "server_url": s.url}))
    (root / "server.pub").write_text(reg["manifest_public_key"])
    d = root / "versions" / str(vid)
    d.mkdir(parents=True)
    for file, path in (("model.onnx", "model.onnx"), ("manifest.json", "manifest"),
                       ("probe.npz", "probe")):
        r = httpx.get(f"{s.url}/v1/versions/{vid}/{path}", headers=me, timeout=30)
        assert r.status_code == 200, r.text
        (d / file).write_bytes(r.content)
    os.symlink(f"versions/{vid}", root / "current")
    (root / "state.json").write_text(json.dumps({
        "highest": {f.line("detector"): 1}, "active": vid, "previous": None,
        "pending_reports": [], "switching": None, "probation": None}))
    ok(httpx.post(f"{s.url}/v1/devices/{reg['device_id']}/updates", headers=me, json={
        "version_id": vid, "ok": True, "phase": "done", "p50_ms": 0.1}), 201)
    ok(httpx.post(f"{s.url}/v1/devices/{reg['device_id']}/heartbeat", headers=me,
                  json={"current_version_id": vid, "status": "ok"}))
    return int(reg["device_id"])


def test_an_agent_on_the_one_model_layout_keeps_working(setup: Setup) -> None:
    f, s = setup, setup.s
    a = Agent(1, s, f.token, f.tmp)
    dev = old_layout(f, a.dir, a.name)
    assert ok(s.admin.get(f"/v1/devices/{dev}"))["multi_model"] is False
    det, cls = f.line("detector"), f.line("classifier")
    try:
        url = serving(a)
        wait_for(lambda: (a.dir / "models").is_dir() and not (a.dir / "versions").exists(),
                 "the agent to move its data directory")
        assert os.readlink(a.dir / "current") == f"models/{det}/current"
        assert (a.dir / "current" / "model.onnx").read_bytes() == ONNX["d1"]
        body, x = wait_for(lambda: _infer_when_up(url), "the inference endpoint")
        assert body["version_id"] == f.vids["d1"]
        np.testing.assert_allclose(body["outputs"]["y"], expected("d1", x), rtol=1e-4)
        wait_for(lambda: ok(s.admin.get(f"/v1/devices/{dev}"))["multi_model"],
                 "a heartbeat with per-model versions")

        r = rollout(s, f.vids["d2"], [100], selector={"device_ids": [dev]})
        wait_for(lambda: rollout_state(s, r) == "completed", "the detector's v2", 60)
        assert a.current() == f.vids["d2"]
        assert (a.dir / "current" / "model.onnx").read_bytes() == ONNX["d2"]
        r = rollout(s, f.vids["c1"], [100], selector={"device_ids": [dev]})
        wait_for(lambda: rollout_state(s, r) == "completed", "a classifier beside it", 60)
        assert (runs(a, det), runs(a, cls)) == (f.vids["d2"], f.vids["c1"])
        assert a.state().primary == det
        body, _x = infer(url, "/v1/infer", 64)
        assert body["model"] == det
    finally:
        a.stop()


def _infer_when_up(url: str) -> tuple[dict, np.ndarray] | None:
    try:
        return infer(url, "/v1/infer", 64)
    except (httpx.TransportError, AssertionError):
        return None


def test_no_server_errors(setup: Setup) -> None:
    log = setup.s.log.read_text()
    assert " 500 " not in log and "Traceback" not in log, log[-3000:]
