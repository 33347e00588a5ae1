"""The loopback inference endpoint: JSON and raw tensor bodies, and it follows switches."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.agent import Agent
from edge_agent.serve import InferenceServer, ModelRuntime
from tests.edge_agent.conftest import cycle
from tests.edge_agent.fakes import FakeServer


def expected(onnx: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture
def served(fake: FakeServer, make_agent: Callable[..., Agent], models: dict[str, bytes]
           ) -> tuple[Agent, InferenceServer]:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.publish(2, 2, models["v2"])
    srv = InferenceServer(ModelRuntime(a.store), 0)
    a.server = srv.start()  # the agent stops it at close
    return a, srv


def test_inference_json_raw_and_switch(fake: FakeServer, served: tuple[Agent, InferenceServer],
                                       models: dict[str, bytes]) -> None:
    a, srv = served
    url = f"http://127.0.0.1:{srv.port}"
    x = np.random.default_rng(3).standard_normal((3, 64)).astype(np.float32)
    r = httpx.post(f"{url}/v1/infer", json={"input": x.tolist()})
    assert r.status_code == 503  # nothing active yet
    fake.want(1)
    cycle(a)
    info = httpx.get(f"{url}/v1/model").json()
    assert info["version_id"] == 1 and info["path"].endswith("current/model.onnx")
    assert info["inputs"][0]["name"] == "x"

    r = httpx.post(f"{url}/v1/infer", json={"inputs": {"x": x.tolist()}})
    assert r.status_code == 200 and r.json()["version_id"] == 1
    np.testing.assert_allclose(r.json()["outputs"]["y"], expected(models["v1"], x), rtol=1e-5)

    fake.want(2)
    cycle(a)
    r = httpx.post(f"{url}/v1/infer", content=x.tobytes(),
                   headers={"Content-Type": "application/octet-stream", "X-Shape": "3,64"})
    assert r.status_code == 200 and r.headers["X-Version-Id"] == "2"
    assert r.headers["X-Shape"] == "3,4" and r.headers["X-Dtype"] == "float32"
    got = np.frombuffer(r.content, np.float32).reshape(3, 4)
    np.testing.assert_allclose(got, expected(models["v2"], x), rtol=1e-5)


@pytest.mark.parametrize("body,headers,status", [
    (b"not json", {"Content-Type": "application/json"}, 400),
    (b'{"inputs": {}}', {"Content-Type": "application/json"}, 400),
    (b"\0" * 12, {"Content-Type": "application/octet-stream", "X-Shape": "1,64"}, 400),
    (b"\0" * 256, {"Content-Type": "application/octet-stream", "X-Shape": "a,b"}, 400),
    (b"\0" * 256, {"Content-Type": "application/octet-stream", "X-Shape": "1,64",
                   "X-Dtype": "object"}, 400),
], ids=["bad-json", "missing-input", "short-raw", "bad-shape", "bad-dtype"])
def test_bad_requests_get_problems(fake: FakeServer, served: tuple[Agent, InferenceServer],
                                   body: bytes, headers: dict[str, str], status: int) -> None:
    a, srv = served
    fake.want(1)
    cycle(a)
    r = httpx.post(f"http://127.0.0.1:{srv.port}/v1/infer", content=body, headers=headers)
    assert r.status_code == status and r.json()["detail"]


def test_listens_on_loopback_only(served: tuple[Agent, InferenceServer]) -> None:
    _a, srv = served
    assert srv.httpd.server_address[0] == "127.0.0.1"
