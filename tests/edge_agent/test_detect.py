"""Detectors on the agent: the task read from the file's metadata, detections served as boxes,
the smoke test matching detections on the server's probe within the documented tolerance,
and a delta update from one detector version to the next."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from edge_agent import detect
from edge_agent.agent import Agent
from edge_agent.errors import SmokeTestError
from edge_agent.serve import InferenceServer
from tests.edge_agent.conftest import cycle
from tests.edge_agent.detect_onnx import CLASSES, THRESHOLD, detector_onnx, image, run
from tests.edge_agent.fakes import FakeServer, mlp_onnx

INFO = detect.ModelInfo("detect", CLASSES, THRESHOLD)


@pytest.fixture(scope="module")
def detectors() -> dict[str, bytes]:
    return {"v1": detector_onnx(0), "v2": detector_onnx(0, scale=0.3)}


def server_probe(onnx_bytes: bytes) -> bytes:
    """The probe the server ships with a version (cloud_service.services.publish)."""
    from cloud_service.services.publish import make_probe

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "model.onnx"
        p.write_bytes(onnx_bytes)
        return make_probe(p)


def shifted_probe(onnx_bytes: bytes, dx: float) -> bytes:
    with np.load(io.BytesIO(server_probe(onnx_bytes))) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["outputs"] = arrays["outputs"].copy()
    arrays["outputs"][:, [0, 2]] += dx
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("make,task", [
    (lambda: detector_onnx(0), "detect"),
    (lambda: detector_onnx(0, task=None), "classify"),
    (lambda: mlp_onnx(0), "classify"),
    (lambda: b"\x08\x07 not really onnx", "classify"),
], ids=["detector", "detector-without-task", "classifier", "garbage"])
def test_model_info_from_the_file(tmp_path: Path, make: Callable[[], bytes],
                                  task: str) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(make())
    assert detect.model_info(p).task == task


def test_metadata_reader_agrees_with_onnx(tmp_path: Path, detectors: dict[str, bytes]) -> None:
    import onnx

    p = tmp_path / "m.onnx"
    p.write_bytes(detectors["v1"])
    want = {e.key: e.value for e in onnx.load(str(p)).metadata_props}
    assert detect.read_metadata(p) == want
    assert detect.model_info(p) == INFO


def _table(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, np.float32).reshape(-1, 6)


BASE = [[2, 2, 12, 12, 0.9, 0], [20, 4, 30, 14, 0.6, 2], [5, 18, 15, 28, 0.3, 1]]


@pytest.mark.parametrize("got,error", [
    (BASE, None),
    ([BASE[2], BASE[0], BASE[1]], None),                                   # order
    ([[2.3, 2, 12.3, 12, 0.9, 0], *BASE[1:]], None),                       # IoU 0.94
    ([[2, 2, 12, 12, 0.86, 0], *BASE[1:]], None),                          # score -0.04
    ([*BASE, [0, 0, 4, 4, 0.08, 1]], None),                                # near threshold
    ([[3, 2, 13, 12, 0.9, 0], *BASE[1:]], "has no match"),                 # IoU 0.82
    ([[2, 2, 12, 12, 0.84, 0], *BASE[1:]], "has no match"),                # score -0.06
    ([[2, 2, 12, 12, 0.9, 1], *BASE[1:]], "has no match"),                 # class
    (BASE[:2], "has no match"),                                            # one missing
    ([*BASE, [0, 0, 4, 4, 0.5, 1]], "1 unexpected detection"),             # one more
], ids=["same", "reordered", "iou-0.94", "score-0.04", "extra-near-threshold", "iou-0.82",
        "score-0.06", "other-class", "missing", "extra"])
def test_probe_tolerance(got: list[list[float]], error: str | None) -> None:
    if error is None:
        assert detect.match(_table(BASE), _table(got), INFO) <= detect.PROBE_SCORE_TOL
    else:
        with pytest.raises(SmokeTestError, match=error):
            detect.match(_table(BASE), _table(got), INFO)


def test_missing_detection_near_threshold_is_tolerated() -> None:
    want = _table([*BASE, [0, 0, 4, 4, 0.09, 1]])
    assert detect.match(want, _table(BASE), INFO) == 0.0


def test_agent_serves_boxes_and_updates_a_detector_by_delta(
        fake: FakeServer, make_agent: Callable[..., Agent], detectors: dict[str, bytes]) -> None:
    for vid, key in ((1, "v1"), (2, "v2")):
        fake.publish(vid, vid, detectors[key], probe=server_probe(detectors[key]))
    a = make_agent()
    fake.want(1)
    cycle(a)
    assert a.state.active == 1 and fake.reports[-1]["phase"] == "done", fake.reports
    srv = InferenceServer(a.runtime, 0).start()
    url = f"http://127.0.0.1:{srv.port}"
    try:
        x = image(3)
        for path in ("/v1/infer", "/v1/models/model-1/infer"):
            r = httpx.post(url + path, json={"input": x.tolist()})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["task"] == "detect" and body["version_id"] == 1
            want = run(detectors["v1"], x)
            assert len(body["detections"]) == len(want) > 0
            for d in body["detections"]:
                assert set(d) == {"class", "label", "score", "box"}
                assert d["label"] == CLASSES[d["class"]]
            order = np.argsort(-want[:, 4], kind="stable")
            np.testing.assert_allclose([d["box"] for d in body["detections"]],
                                       want[order, :4], atol=1e-3)
            np.testing.assert_allclose([d["score"] for d in body["detections"]],
                                       want[order, 4], atol=1e-5)
        desc = httpx.get(url + "/v1/models/model-1").json()
        assert (desc["task"], desc["classes"]) == ("detect", CLASSES)
        two = httpx.post(url + "/v1/infer", json={"input": np.concatenate([x, x]).tolist()})
        assert two.status_code == 400 and "one image per request" in two.json()["detail"]

        fake.want(2)  # the next version arrives as a delta and its probe passes
        cycle(a)
        assert a.state.active == 2 and fake.reports[-1]["phase"] == "done", fake.reports
        assert 0 < fake.bytes_sent["delta"] < len(detectors["v2"])
        r = httpx.post(url + "/v1/infer", json={"input": x.tolist()})
        assert r.json()["version_id"] == 2
        got = np.asarray([d["box"] for d in r.json()["detections"]])
        want2 = run(detectors["v2"], x)
        np.testing.assert_allclose(got, want2[np.argsort(-want2[:, 4], kind="stable"), :4],
                                   atol=1e-3)
    finally:
        srv.stop()


def test_a_probe_whose_boxes_differ_fails_the_smoke_test(
        fake: FakeServer, make_agent: Callable[..., Agent], detectors: dict[str, bytes]) -> None:
    fake.publish(1, 1, detectors["v1"], probe=shifted_probe(detectors["v1"], 3.0))
    a = make_agent()
    fake.want(1)
    cycle(a)
    assert a.state.active is None
    last = fake.reports[-1]
    assert (last["ok"], last["phase"]) == (False, "smoke"), last
    assert "has no match" in last["reason"], last["reason"]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_smoke_test_of_a_detector_on_each_runtime(tmp_path: Path, detectors: dict[str, bytes],
                                                  backend: str) -> None:
    """The server's probe (ONNX Runtime) passes on either runtime of the device."""
    from edge_agent.smoke import load_probe, smoke_test
    from hadmc_core import backends

    if not backends.get(backend).available():
        pytest.skip(f"{backend} is not installed")
    p = tmp_path / "model.onnx"
    p.write_bytes(detectors["v2"])
    result = smoke_test(p, load_probe(server_probe(detectors["v2"])), runs=3, backend=backend)
    assert result.max_abs_err is not None and result.max_abs_err <= detect.PROBE_SCORE_TOL
    with pytest.raises(SmokeTestError, match="has no match"):
        smoke_test(p, load_probe(shifted_probe(detectors["v2"], 2.0)), runs=3, backend=backend)


def test_server_probe_of_a_detector_is_one_image_in_0_to_1(detectors: dict[str, bytes]) -> None:
    with np.load(io.BytesIO(server_probe(detectors["v1"]))) as z:
        x, y = z["inputs"], z["outputs"]
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0.2  # pixels, not N(0, 1)
    np.testing.assert_array_equal(y, run(detectors["v1"], x))
    with np.load(io.BytesIO(server_probe(mlp_onnx(0)))) as z:  # a classifier's is unchanged
        assert z["inputs"].shape[0] == 2 and z["inputs"].min() < 0
