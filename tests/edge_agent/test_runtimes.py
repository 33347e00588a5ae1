"""Each version runs on the runtime it was built for: the desired entry's ``runtimes``
pick the runtime (the first installed here), the agent records it beside the version, and
the smoke test, the health baseline and the inference endpoint open the version with it."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edge_agent.agent import Agent
from edge_agent.errors import SmokeTestError
from edge_agent.serve import InferenceServer
from edge_agent.smoke import RUNTIME_FILE, choose_runtime, open_session, runtime_of
from tests.edge_agent.conftest import cycle
from tests.edge_agent.fakes import FakeServer

MODEL = "model-1"


@pytest.mark.parametrize("names,want", [
    (["openvino-cpu"], "openvino"),
    (["openvino-cpu-2026.4", "onnxruntime-cpu"], "openvino"),
    (["tensorrt-gpu", "onnxruntime-cpu-1.20"], "onnxruntime"),  # the first installed
    (None, "onnxruntime"),                                      # none named: the default
    ([], "onnxruntime"),
], ids=["openvino", "openvino-first", "skip-missing", "unnamed", "empty"])
def test_choose_runtime(names: list[str] | None, want: str) -> None:
    assert choose_runtime(names).name == want


def test_a_runtime_that_is_not_here_is_refused_in_one_line() -> None:
    with pytest.raises(SmokeTestError, match=r"built for tensorrt-gpu; this device has "
                                             r"onnxruntime, openvino \(install"):
        choose_runtime(["tensorrt-gpu"])


def test_openvino_version_is_smoke_tested_recorded_and_served_by_openvino(
        fake: FakeServer, make_agent: Callable[..., Agent], models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.publish(2, 2, models["v2"])
    fake.want_models([(1, {"runtimes": ["openvino-cpu"]})])
    cycle(a)
    assert fake.reports[-1]["ok"] is True, fake.reports
    vdir = a.store.model(MODEL).version_dir(1)
    assert (vdir / RUNTIME_FILE).read_text() == "openvino\n"
    assert runtime_of(vdir).name == "openvino"
    assert type(open_session(vdir / "model.onnx")).__name__ == "OvSession"

    a.server = InferenceServer(a.runtime, 0).start()
    url = f"http://127.0.0.1:{a.server.port}"
    info = httpx.get(f"{url}/v1/model").json()
    assert info["runtime"] == "openvino" and info["version_id"] == 1
    assert info["inputs"] == [{"name": "x", "shape": [None, 64], "type": "float32"}]
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    r = httpx.post(f"{url}/v1/infer", json={"input": x.tolist()})
    assert r.status_code == 200, r.text
    want = ort.InferenceSession(models["v1"], providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(r.json()["outputs"]["y"], want, rtol=1e-4, atol=1e-5)

    # the next version names no runtime: ONNX Runtime (the first installed) runs it
    fake.want_models([(2, {})])
    cycle(a)
    assert fake.reports[-1]["ok"] is True, fake.reports
    assert (a.store.model(MODEL).version_dir(2) / RUNTIME_FILE).read_text() == "onnxruntime\n"
    assert httpx.get(f"{url}/v1/model").json()["runtime"] == "onnxruntime"


def test_version_for_a_runtime_this_device_lacks_fails_its_smoke_test(
        fake: FakeServer, make_agent: Callable[..., Agent], models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want_models([(1, {"runtimes": ["tensorrt-gpu"]})])
    cycle(a)
    report = fake.reports[-1]
    assert (report["ok"], report["phase"]) == (False, "smoke"), report
    assert report["reason"].startswith("the version was built for tensorrt-gpu; this device "
                                       "has onnxruntime, openvino"), report
    assert a.store.model(MODEL).current_vid() is None
