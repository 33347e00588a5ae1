"""End to end: a job that targets an enrolled device, and versions that run with the runtime
they were built for. A real ``hadmc serve`` (PostgreSQL, its in-process worker and
rollout scheduler) and two real ``hadmc-agent`` processes: one on OpenVINO only (ONNX
Runtime hidden from it, as in a ``hadmc[edge-openvino]`` install) that measures and sends
its operator latency table, one on ONNX Runtime only.

A job targeting the OpenVINO agent is built by OpenVINO with that agent's table (the report
says ``latency_source: device_table``); its version records ``openvino-cpu``; a rollout
skips the ONNX Runtime agent with the reason and the OpenVINO agent smoke-tests it and
serves it at ``/v1/infer`` with OpenVINO. Bad targets are problems (404, 409). The
compression is a linear digits classifier with quantization only; on a two-core machine
under a load of 20 the test took 2-3 minutes (the OpenVINO agent's table 40 s, the worker's
imports 36 s and NNCF's quantization 42 s), far less on an idle one."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from hadmc_core.data import load_dataset
from hadmc_core.hal import load_profile
from hadmc_core.hal import onnxwrite as ow
from tests.e2e.helpers import (
    ROOT,
    Agent,
    Server,
    database,
    free_port,
    ok,
    server_env,
    start_server,
    stop,
    wait_for,
)

pytestmark = pytest.mark.slow
__all__ = ["database"]  # the module-scoped fixture
#: Every stage but quantization off: the job takes seconds.
QUICK = {"prune": {"enabled": False}, "distill": {"enabled": False},
         "int4": {"enabled": False},
         "quantize": {"keep_ladder": [0], "calib_samples": 32, "sensitivity_samples": 16},
         "measure": {"runs": 5, "warmup": 2, "in_graph": False}, "max_candidates": 1}


def digits_model() -> bytes:
    """A linear classifier of the digits images (x[N,1,8,8] -> Flatten -> MatMul -> Add),
    fitted by least squares: about 90% right, so the served answers can be checked."""
    train = load_dataset("digits").train
    x = train.x.reshape(len(train.x), -1).astype(np.float64)
    xb = np.hstack([x, np.ones((len(x), 1))])
    w, *_ = np.linalg.lstsq(xb, np.eye(10)[train.y], rcond=None)
    nodes = [ow.node("Flatten", ["x"], ["f"], axis=1), ow.node("MatMul", ["f", "w"], ["m"]),
             ow.node("Add", ["m", "b"], ["y"])]
    return ow.model(nodes, [ow.value_info("x", ["N", 1, 8, 8])], [ow.value_info("y", ["N", 10])],
                    [ow.tensor("w", w[:-1].astype(np.float32)),
                     ow.tensor("b", w[-1].astype(np.float32))])


@pytest.fixture(scope="module")
def server(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("targets")
    env = server_env(database, tmp, HADMC_ROLLOUT_INTERVAL_SECONDS="0.5",
                     HADMC_QUEUE=f"e2e_{uuid.uuid4().hex[:8]}")
    srv = start_server(env, tmp)
    yield srv
    srv.admin.close()
    stop(srv.proc)


def agent_without(hidden: str, i: int, s: Server, token: str, root: Path, **env: str) -> Agent:
    """An agent process that does not see ``hidden`` (``tests/e2e/hide_runtime.py``), its
    inference endpoint on a free port."""
    a = Agent(i, s, token, root, **env)
    a.cmd = [sys.executable, str(ROOT / "tests" / "e2e" / "hide_runtime.py"), hidden,
             *a.cmd[3:]]
    a.cmd[a.cmd.index("--serve-port") + 1] = str(free_port())
    return a


def problem(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert words in r.json()["detail"], r.json()


def test_job_for_a_device_runs_on_its_runtime(server: Server, tmp_path: Path) -> None:
    s = server
    mid = ok(s.admin.post("/v1/models", params={"name": "digits-linear", "format": "onnx"},
                          content=digits_model(), headers=s.octet), 201)["id"]
    did = ok(s.admin.post("/v1/datasets", json={"builtin": "digits"}), 201)["id"]
    token = ok(s.admin.post("/v1/enrollment-tokens", json={"max_uses": 3}), 201)["token"]
    ov = agent_without("onnxruntime", 0, s, token, tmp_path)  # agent 0 sends its table
    ort = agent_without("openvino", 1, s, token, tmp_path)
    try:
        for a in (ov, ort):
            a.start()

        def devices() -> dict[str, dict[str, Any]] | None:
            data = {d["name"]: d for d in ok(s.admin.get("/v1/devices"))["data"]}
            ready = len(data) == 2 and all(d["profile"] for d in data.values()) \
                and (data["agent-0"]["latency"] or {}).get("operators")
            return data if ready else None

        devs = wait_for(devices, "two profiles and agent-0's latency table", 90)
        ov_id, ort_id = devs["agent-0"]["id"], devs["agent-1"]["id"]
        assert [r.split("-")[0] for r in devs["agent-0"]["profile"]["runtimes"]] == ["openvino"]
        assert [r.split("-")[0] for r in devs["agent-1"]["profile"]["runtimes"]] == [
            "onnxruntime"]
        table = devs["agent-0"]["latency"]["operators"]

        # bad targets
        job = {"model_id": mid, "dataset_id": did, "config": QUICK,
               "constraints": {"max_accuracy_drop": 100}}
        problem(s.admin.post("/v1/jobs", json={**job, "target": {"device": 424242}}), 404,
                "device 424242 does not exist")
        prof = load_profile("x86-avx2").model_dump(mode="json")
        gone = ok(s.admin.post("/v1/devices/register", json={
            "enrollment_token": token, "name": "gone", "profile": prof}), 201)["device_id"]
        assert s.admin.delete(f"/v1/devices/{gone}").status_code in (200, 204)
        problem(s.admin.post("/v1/jobs", json={**job, "target": {"device": gone}}), 409,
                f"device {gone} is revoked")
        problem(s.admin.post("/v1/jobs", json={**job, "target": {"devices": {"tags": ["x"]}}}),
                409, "no usable device has any of the tags x")

        # a job for the OpenVINO agent: its runtime and its table
        jid = ok(s.admin.post("/v1/jobs", json={**job, "target": {"device": ov_id}}), 202)["id"]
        done = wait_for(lambda: (j := ok(s.admin.get(f"/v1/jobs/{jid}")))["state"] in (
            "succeeded", "failed") and j, "the job to finish", 240, every=1.0)
        assert done["state"] == "succeeded", done
        vid = done["version_id"]
        report = ok(s.admin.get(f"/v1/versions/{vid}/report"))
        assert report["latency_source"] == "device_table" and report["backend"] == "openvino"
        assert report["target"]["device_ids"] == [ov_id]
        assert report["target"]["runtime"] == "openvino-cpu"
        assert report["target"]["latency"] == "device_table" and table
        # the agent's table carries its whole-model term; the prediction goes through it
        assert {"model|fp32", "model|int8"} <= set(table), table
        assert report["latency_model"] == "device-table+whole-model-term"
        assert report["target"]["terms_from"] == [ov_id], report["target"]
        # what the p50 the device reports for this version is paired with in later jobs
        assert report["target"]["table_ms"][str(ov_id)] > 0, report["target"]
        assert report["target"]["table_precision"] in ("fp32", "int8")
        assert report["target"]["correction"] is None and report["latency_correction"] is None
        built = ok(s.admin.get(f"/v1/versions/{vid}"))["built_for"]
        assert built["runtime"] == "openvino-cpu" and built["runtimes"] == ["openvino-cpu"]
        assert built["memory_mb"] >= 1 and built["runtime_version"]["min"].startswith("20")

        # the ONNX Runtime agent is skipped with the reason; alone it is a 409
        problem(s.admin.post("/v1/rollouts", json={
            "version_id": vid, "selector": {"device_ids": [ort_id]}}), 409,
            "built for the runtime openvino-cpu")
        rid = ok(s.admin.post("/v1/rollouts", json={
            "version_id": vid, "selector": {"all": True}, "wave_timeout_seconds": 120}),
            201)["id"]
        wait_for(lambda: ok(s.admin.get(f"/v1/rollouts/{rid}"))["state"] == "completed",
                 "the rollout to complete", 90)
        rows = {r["device_id"]: r for r in ok(s.admin.get(f"/v1/rollouts/{rid}/devices"))[
            "data"]}
        assert rows[ov_id]["status"] == "succeeded" and rows[ov_id]["p50_ms"], rows
        lat = ok(s.admin.get(f"/v1/versions/{vid}"))["latency"]
        assert lat["predicted_source"] == "device_table" and lat["predicted_ms"] > 0
        assert lat["predicted_model"] == "device-table+whole-model-term"
        # a version's p50 report does not empty the device's table
        assert ok(s.admin.get(f"/v1/devices/{ov_id}"))["latency"]["operators"] == table
        assert rows[ort_id]["status"] == "skipped", rows
        assert rows[ort_id]["reason"].startswith("built for the runtime openvino-cpu; the "
                                                 "device has onnxruntime-cpu-"), rows
        assert ov.current() == vid and ort.current() is None

        # smoke-tested and served by OpenVINO on the agent that has no ONNX Runtime
        assert (ov.dir / "models" / f"model-{mid}" / "versions" / str(vid) / "runtime"
                ).read_text().strip() == "openvino"
        url = "http://127.0.0.1:" + ov.cmd[ov.cmd.index("--serve-port") + 1]
        info = ok(httpx.get(f"{url}/v1/model"))
        assert info["runtime"] == "openvino" and info["version_id"] == vid
        test = load_dataset("digits").test
        r = ok(httpx.post(f"{url}/v1/infer", json={"input": test.x[:64].tolist()}))
        (scores,) = r["outputs"].values()  # the one output (named by the export)
        right = float(np.mean(np.argmax(np.asarray(scores), 1) == test.y[:64]))
        assert r["version_id"] == vid and right > 0.8, right
    finally:
        for a in (ov, ort):
            a.stop()
        print({a.name: a.log.read_text()[-1500:] for a in (ov, ort) if a.log.exists()},
              s.log.read_text()[-3000:])
