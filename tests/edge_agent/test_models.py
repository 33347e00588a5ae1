"""Several models on one device: each model's versions kept apart, each served at its own
URL and file path, one model updated, held or rolled back without touching the other."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main
from edge_agent.serve import InferenceServer
from tests.edge_agent.conftest import cycle
from tests.edge_agent.fakes import FakeServer, mlp_onnx

DET, CLS = "model-1", "model-2"


def expected(onnx: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def classifiers() -> dict[str, bytes]:
    """Another model: 32 inputs instead of 64."""
    return {"w1": mlp_onnx(5, inputs=32, hidden=64),
            "w2": mlp_onnx(5, scale=0.01, inputs=32, hidden=64)}


@pytest.fixture
def two(fake: FakeServer, make_agent: Callable[..., Agent], models: dict[str, bytes],
        classifiers: dict[str, bytes]) -> Iterator[tuple[Agent, str]]:
    """An agent on the detector v1 (id 1, its first model) and the classifier w1 (id 11),
    with the inference endpoint on a free port."""
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.publish(2, 2, models["v2"])
    fake.publish(11, 1, classifiers["w1"], model=CLS)
    fake.publish(12, 2, classifiers["w2"], model=CLS)
    fake.want_models([(1, {}), (11, {})], names={CLS: "classifier"})
    cycle(a)  # one update per turn of the loop
    cycle(a)
    a.server = InferenceServer(a.runtime, 0).start()
    yield a, f"http://127.0.0.1:{a.server.port}"


def runs(a: Agent) -> dict[str, int | None]:
    return {k: a.store.model(k).current_vid() for k in a.store.model_keys()}


def test_two_models_side_by_side_each_served_at_its_url(
        two: tuple[Agent, str], fake: FakeServer, models: dict[str, bytes],
        classifiers: dict[str, bytes], capsys: pytest.CaptureFixture[str]) -> None:
    a, url = two
    assert runs(a) == {DET: 1, CLS: 11}
    assert (a.state.primary, a.state.models[CLS].name) == (DET, "classifier")
    root = a.store.root
    assert sorted(p.name for p in (root / "models").iterdir()) == [DET, CLS]
    assert os.readlink(root / "current") == f"models/{DET}/current"
    assert (root / "current" / "model.onnx").read_bytes() == models["v1"]
    assert (root / "models" / CLS / "current" / "model.onnx").read_bytes() == classifiers["w1"]
    assert [(r["model"], r["version_id"], r["phase"]) for r in fake.reports] == [
        (DET, 1, "done"), (CLS, 11, "done")]

    x64 = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    x32 = np.random.default_rng(2).standard_normal((3, 32)).astype(np.float32)
    for path, x, onnx, model, vid in (
            (f"/v1/models/{DET}/infer", x64, models["v1"], DET, 1),
            ("/v1/infer", x64, models["v1"], DET, 1),
            (f"/v1/models/{CLS}/infer", x32, classifiers["w1"], CLS, 11),
            ("/v1/models/classifier/infer", x32, classifiers["w1"], CLS, 11)):
        r = httpx.post(url + path, json={"input": x.tolist()})
        assert r.status_code == 200, (path, r.text)
        assert (r.json()["model"], r.json()["version_id"]) == (model, vid)
        np.testing.assert_allclose(r.json()["outputs"]["y"], expected(onnx, x), rtol=1e-5)
    raw = httpx.post(f"{url}/v1/models/{CLS}/infer", content=x32.tobytes(),
                     headers={"Content-Type": "application/octet-stream", "X-Shape": "3,32"})
    assert raw.headers["X-Model"] == CLS and raw.headers["X-Version-Id"] == "11"

    listing = httpx.get(f"{url}/v1/models").json()["models"]
    assert [(m["model"], m["name"], m["version_id"], m["primary"]) for m in listing] == [
        (DET, None, 1, True), (CLS, "classifier", 11, False)]
    assert listing[1]["path"] == str(root / "models" / CLS / "current" / "model.onnx")
    info = httpx.get(f"{url}/v1/models/classifier").json()
    assert info["inputs"][0]["shape"] == [None, 32] and info["path"] == listing[1]["path"]
    assert httpx.get(f"{url}/v1/model").json()["path"] == str(root / "current" / "model.onnx")
    missing = httpx.post(f"{url}/v1/models/nope/infer", json={"input": [[0.0]]})
    assert missing.status_code == 404 and "model-1, model-2" in missing.json()["detail"]

    assert main(["status", "--data-dir", str(root)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["primary"], status["current"], status["layout"]) == (DET, 1, "per model")
    assert {k: (m["active"], m["name"], m["model_path"]) for k, m in status["models"].items()} \
        == {DET: (1, None, str(root / "models" / DET / "current" / "model.onnx")),
            CLS: (11, "classifier", listing[1]["path"])}

    a.heartbeat()
    assert fake.heartbeats[-1]["models"] == [{"model": DET, "version_id": 1},
                                             {"model": CLS, "version_id": 11}]
    assert fake.heartbeats[-1]["current_version_id"] == 1


def test_one_model_rolled_back_the_other_untouched(two: tuple[Agent, str], fake: FakeServer
                                                   ) -> None:
    a, _url = two
    cls_dir = a.store.model(CLS).version_dir(11)
    before = (os.readlink(a.store.model(CLS).current), cls_dir.stat().st_ino)
    fake.want_models([(2, {}), (11, {})])
    cycle(a)
    assert runs(a) == {DET: 2, CLS: 11} and a.state.highest == {DET: 2, CLS: 1}
    assert "delta" in fake.bytes_sent  # from the detector's own previous version

    fake.want_models([(1, {"rollback_order": fake.rollback_order(1)}), (11, {})])
    cycle(a)
    assert runs(a) == {DET: 1, CLS: 11}
    assert fake.reports[-1]["model"] == DET and fake.reports[-1]["phase"] == "rollback"
    assert (a.state.models[DET].active, a.state.models[DET].previous) == (1, 2)
    assert (os.readlink(a.store.model(CLS).current), cls_dir.stat().st_ino) == before
    assert a.store.model(CLS).held() == [11] and a.store.model(DET).held() == [1, 2]


def test_a_held_model_waits_while_the_other_updates(two: tuple[Agent, str], fake: FakeServer
                                                    ) -> None:
    a, _url = two
    fake.want_models([(2, {"hold": True}), (12, {})])
    cycle(a)
    cycle(a)
    assert runs(a) == {DET: 1, CLS: 12}
    assert a.pending_version() is None
    fake.want_models([(2, {}), (12, {})])
    cycle(a)
    assert runs(a) == {DET: 2, CLS: 12}


def test_a_failed_model_does_not_block_the_other(two: tuple[Agent, str], fake: FakeServer,
                                                 models: dict[str, bytes]) -> None:
    a, _url = two
    fake.publish(3, 3, models["v3"], probe=b"not an npz")
    fake.want_models([(3, {}), (12, {})])
    cycle(a)  # the detector's v3 fails its smoke test
    cycle(a)  # the classifier goes on
    assert runs(a) == {DET: 1, CLS: 12}
    failed = [r for r in fake.reports if not r["ok"]]
    assert [(r["model"], r["version_id"], r["phase"]) for r in failed] == [(DET, 3, "smoke")]


def test_reports_fall_back_for_a_server_that_knows_one_model(
        fake: FakeServer, make_agent: Callable[..., Agent], models: dict[str, bytes]) -> None:
    fake.one_model = True
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    a.heartbeat()
    cycle(a)
    a.heartbeat()
    assert fake.heartbeats == [{"current_version_id": None, "status": "ok"},
                               {"current_version_id": 1, "status": "ok"}]
    assert [(r["version_id"], "model" in r) for r in fake.reports] == [(1, False)]
    assert a.one_model_server
