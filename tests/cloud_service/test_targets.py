"""Jobs that target devices (resolution at submission, the worker's plan: profile, runtime,
device table) and versions matched by what they were built for (runtime, its version
range, memory), on a real PostgreSQL through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from cloud_service.db import session_scope
from cloud_service.models import Job, ModelVersion
from cloud_service.services.compat import memory_needed_mb
from cloud_service.settings import Settings
from cloud_service.tasks.targets import TERM_PREFIX, WHOLE_MODEL, combine_tables, plan
from tests.cloud_service.conftest import device_profile, enroll, insert_version, make_onnx

OV = "openvino-cpu-2026.4"
ORT = "onnxruntime-cpu-1.32"


_credentials: dict[int, str] = {}


def _device(client: TestClient, auth: dict, name: str, runtimes: list[str], *,
            tags: list[str] | None = None, table: dict[str, list[float]] | None = None,
            **profile: Any) -> int:
    d = enroll(client, auth, name, device_profile(runtimes=runtimes, **profile))
    _credentials[int(d["device_id"])] = d["credential"]
    if table is not None:
        r = client.post(f"/v1/devices/{d['device_id']}/latency", json={"operators": table},
                        headers={"Authorization": f"Bearer {d['credential']}"})
        assert r.status_code in (200, 201), r.text
    if tags:
        r = client.patch(f"/v1/devices/{d['device_id']}", json={"tags": tags}, headers=auth)
        assert r.status_code == 200, r.text
    return int(d["device_id"])


def _submit(client: TestClient, auth: dict, model: dict, data: dict, **body: Any) -> Any:
    return client.post("/v1/jobs", headers=auth, json={
        "model_id": model["id"], "dataset_id": data["id"], **body})


def _problem(r: Any, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail
    return str(detail)


def _plan(settings: Settings, job_id: int) -> Any:
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return plan(s, job)


def test_bad_targets_are_problems(client: TestClient, auth: dict, tiny_model: dict,
                                  digits: dict) -> None:
    _problem(_submit(client, auth, tiny_model, digits, target={"device": 987654}), 404,
             "device 987654 does not exist")
    gone = _device(client, auth, "gone", [ORT], tags=["only-revoked"])
    assert client.delete(f"/v1/devices/{gone}", headers=auth).status_code in (200, 204)
    _problem(_submit(client, auth, tiny_model, digits, target={"device": gone}), 409,
             f"device {gone} is revoked")
    _problem(_submit(client, auth, tiny_model, digits,
                     target={"devices": {"tags": ["only-revoked"]}}), 409,
             "no usable device has any of the tags only-revoked", f"device {gone} is revoked")
    _problem(_submit(client, auth, tiny_model, digits,
                     target={"devices": {"tags": ["nobody-has-this"]}}), 409,
             "no device has them")
    blank = int(enroll(client, auth, "blank", {})["device_id"])
    _problem(_submit(client, auth, tiny_model, digits, target={"device": blank}), 409,
             "has not reported its hardware profile")
    mixed = [_device(client, auth, "x86", [ORT], tags=["mixed"]),
             _device(client, auth, "arm", ["onnxruntime-cpu-1.32"], tags=["mixed"],
                     isa="arm64")]
    _problem(_submit(client, auth, tiny_model, digits, target={"devices": {"tags": ["mixed"]}}),
             409, "differ in hardware class", f"device {mixed[1]}: arm64 cpu")
    apart = [_device(client, auth, "ort-only", [ORT], tags=["apart"]),
             _device(client, auth, "ov-only", [OV], tags=["apart"])]
    _problem(_submit(client, auth, tiny_model, digits, target={"devices": {"tags": ["apart"]}}),
             409, "share no runtime", f"device {apart[1]}: {OV}")
    for body in ({"profile": "x86-avx2", "target": {"profile": "x86-avx2"}},
                 {"target": {"profile": "x86-avx2", "device": gone}}, {}):
        _problem(_submit(client, auth, tiny_model, digits, **body), 422)
    _problem(_submit(client, auth, tiny_model, digits, target={"profile": "/etc/passwd"}), 422,
             "unknown profile")


def test_device_target_uses_its_table_and_runtime(client: TestClient, auth: dict,
                                                  settings: Settings, tiny_model: dict,
                                                  digits: dict, tmp_path: Path) -> None:
    table = {"conv-k3-s1-32x32|fp32": [0.01, 0.2], "linear|int8": [0.002, 0.05],
             "model|fp32": [0.05, 1.1, 0.3], "model|int8": [0.04, 0.9, 0.2]}
    dev = _device(client, auth, "ov-box", [OV, ORT], table=table)
    r = _submit(client, auth, tiny_model, digits, target={"device": dev})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["profile"] == f"device:{dev}"
    assert job["target"] == {"device_ids": [dev], "runtime": "openvino-cpu"}
    p = _plan(settings, job["id"])
    assert p.device_table == table and p.runtime == "openvino-cpu"
    assert p.profile.runtimes == ["openvino-cpu"] and p.profile.isa == "x86_64"
    assert p.info["latency"] == "device_table" and p.info["notes"] == []
    assert p.info["whole_model"] == WHOLE_MODEL and p.info["terms_from"] == [dev]
    assert p.correction is None and p.info["correction"] is None
    assert p.device_tables == {str(dev): table}
    # a p50 report after an update carries no table: the device's table and term stay
    r = client.post(f"/v1/devices/{dev}/latency", json={"p50_ms": 3.5},
                    headers={"Authorization": f"Bearer {_credentials[dev]}"})
    assert r.status_code == 200 and r.json()["latency"]["p50_ms"] == 3.5
    assert r.json()["latency"]["operators"] == table
    assert _plan(settings, job["id"]).device_table == table

    # The device runs a version built for it (its table predicted 2.0 ms) and reports
    # 0.5 ms; a version whose prediction was another device's table does not count.
    mine, theirs = (insert_version(settings, tiny_model["id"], n, make_onnx(
        tmp_path / f"v{n}.onnx", np.ones((4, 4), np.float32))) for n in (70, 71))
    with session_scope(settings.database_url) as s:
        for vid, table_ms in ((mine, {str(dev): 2.0}), (theirs, {str(dev + 1000): 0.1})):
            s.execute(update(ModelVersion).where(ModelVersion.id == vid).values(
                summary={"target": {"kind": "device", "table_ms": table_ms}}))
    for vid in (mine, theirs):
        r = client.post(f"/v1/devices/{dev}/updates", json={
            "version_id": vid, "ok": True, "phase": "done", "p50_ms": 0.5, "p95_ms": 0.6},
            headers={"Authorization": f"Bearer {_credentials[dev]}"})
        assert r.status_code == 201, r.text
    p = _plan(settings, _submit(client, auth, tiny_model, digits,
                                target={"device": dev}).json()["id"])
    assert p.correction is not None and p.correction.factors == {"fp32": 0.25}
    assert p.info["correction"]["pairs"] == {"fp32": 1}
    assert p.info["correction"]["versions"] == [mine]
    assert p.info["correction"]["source"] == "device table, corrected by 1 reported p50"
    assert p.info["notes"] == [f"device {dev}: its table's predictions scaled per precision "
                               "by the median measured/predicted over the p50s it reported "
                               f"for this model's versions ({mine}): fp32 x0.25 (1)"]

    older = _device(client, auth, "older-agent", [ORT], table={"linear|fp32": [0.1, 0.2]})
    p = _plan(settings, _submit(client, auth, tiny_model, digits,
                                target={"device": older}).json()["id"])
    assert p.device_table == {"linear|fp32": [0.1, 0.2]} and p.info["whole_model"] == \
        "layer sum" and p.info["terms_from"] == []
    assert p.info["notes"] == [f"device {older} sent no whole-model term with its table (an "
                               "agent from before it); its prediction is the sum of its layers"]

    bare = _device(client, auth, "no-table", [ORT])
    p = _plan(settings, _submit(client, auth, tiny_model, digits,
                                target={"device": bare}).json()["id"])
    assert p.device_table is None and p.info["latency"] == "profile"
    assert p.info["notes"] == [f"device {bare} has sent no operator latency table; the job "
                               "used its reported profile"]

    r = _submit(client, auth, tiny_model, digits, profile="x86-avx2")  # the older form
    assert r.status_code == 202 and r.json()["target"] == {"profile": "x86-avx2"}
    assert _plan(settings, r.json()["id"]).info == {"kind": "profile", "profile": "x86-avx2"}


def test_group_combines_the_slowest_per_operator(client: TestClient, auth: dict,
                                                 settings: Settings, tiny_model: dict,
                                                 digits: dict, tmp_path: Path) -> None:
    fast = _device(client, auth, "g-fast", [ORT, OV], tags=["grp"],
                   table={"conv|fp32": [0.01, 0.5], "linear|fp32": [0.3, 0.1]})
    slow = _device(client, auth, "g-slow", [OV], tags=["grp", "other"],
                   peak_gops={"fp32": 10.0, "int8": 20.0},
                   table={"conv|fp32": [0.02, 0.4], "dw|int8": [0.1, 0.2]})
    none = _device(client, auth, "g-none", [ORT, OV], tags=["grp"])
    gone = _device(client, auth, "g-gone", [ORT, OV], tags=["grp"])
    assert client.delete(f"/v1/devices/{gone}", headers=auth).status_code in (200, 204)
    r = _submit(client, auth, tiny_model, digits, target={"devices": {"tags": ["grp"]}})
    assert r.status_code == 202, r.text
    target = r.json()["target"]
    assert target["device_ids"] == [fast, slow, none] and target["runtime"] == "openvino-cpu"
    assert target["left_out"] == {str(gone): f"device {gone} is revoked"}
    p = _plan(settings, r.json()["id"])
    assert p.device_table == {"conv|fp32": [0.02, 0.5], "linear|fp32": [0.3, 0.1],
                              "dw|int8": [0.1, 0.2]}
    assert p.info["profile_of"] == slow and p.profile.peak_gops["fp32"] == 10.0
    assert p.info["tables_from"] == [fast, slow] and p.info["kind"] == "devices"
    assert set(p.device_tables) == {str(fast), str(slow)} and p.correction is None
    assert any(f"device {none} has sent no operator latency table" in n
               for n in p.info["notes"])
    assert combine_tables([]) == {}

    # An INT8 version built for the group runs 3x its prediction on the fast device and
    # half of it on the slow one: the group's INT8 factor is the largest, 3.
    vid = insert_version(settings, tiny_model["id"], 72, make_onnx(
        tmp_path / "g.onnx", np.ones((4, 4), np.float32)))
    with session_scope(settings.database_url) as s:
        s.execute(update(ModelVersion).where(ModelVersion.id == vid).values(summary={
            "target": {"kind": "devices", "table_ms": {str(fast): 1.0, str(slow): 2.0},
                       "table_precision": "int8"}}))
    for dev, p50 in ((fast, 3.0), (slow, 1.0)):
        r = client.post(f"/v1/devices/{dev}/updates", json={
            "version_id": vid, "ok": True, "phase": "done", "p50_ms": p50},
            headers={"Authorization": f"Bearer {_credentials[dev]}"})
        assert r.status_code == 201, r.text
    p = _plan(settings, _submit(client, auth, tiny_model, digits,
                                target={"devices": {"tags": ["grp"]}}).json()["id"])
    assert p.correction is not None
    assert p.correction.factors == pytest.approx({"int8": 3.0})
    per = p.info["correction"]["per_device"]
    assert per[str(fast)] == pytest.approx({"int8": 3.0})
    assert per[str(slow)] == pytest.approx({"int8": 0.5})
    assert p.info["correction"]["pairs"] == {"int8": 2}


def test_group_terms_combine_as_an_upper_envelope() -> None:
    """Coefficient by coefficient; a [c, k] term counts as [c, k, k], and a device without
    a term as the plain sum [0, 1, 1], so no device's own estimate is above the group's."""
    a = {"conv|fp32": [0.01, 0.5], "model|fp32": [0.2, 0.6, 0.1]}
    b = {"conv|fp32": [0.02, 0.4], "model|fp32": [0.1, 0.9], "model|int8": [0.3, 2.0, 0.5]}
    c = {"conv|fp32": [0.01, 0.3]}
    assert combine_tables([a, b]) == {"conv|fp32": [0.02, 0.5],
                                      "model|fp32": [0.2, 0.9, 0.9],
                                      "model|int8": [0.3, 2.0, 0.5]}
    assert combine_tables([a, c])["model|fp32"] == [0.2, 1.0, 1.0]
    assert combine_tables([c]) == c
    from hadmc_core.hal.latency import TERM_PREFIX as CORE_PREFIX

    assert TERM_PREFIX == CORE_PREFIX


def test_version_fits_by_what_it_was_built_for(client: TestClient, auth: dict,
                                               settings: Settings, tiny_model: dict,
                                               tmp_path: Path) -> None:
    path = make_onnx(tmp_path / "w.onnx", np.ones((1024, 1024), np.float32))
    need = memory_needed_mb(path)
    assert need == 5  # 4 MiB of weights + x and y at batch 1, rounded up
    vid = insert_version(settings, tiny_model["id"], 90, path)
    built = {"isa": "x86_64", "accelerator": "cpu", "flags": ["avx2"],
             "runtime": "openvino-cpu", "runtimes": ["openvino-cpu"],
             "runtime_version": {"min": "2026.4", "below": "2027"}, "memory_mb": need}
    with session_scope(settings.database_url) as s:
        s.execute(update(ModelVersion).where(ModelVersion.id == vid).values(built_for=built))
    fits = _device(client, auth, "bf-fits", [ORT, OV])
    ort_only = _device(client, auth, "bf-ort", [ORT])
    old_ov = _device(client, auth, "bf-old", ["openvino-cpu-2025.3"])
    small = _device(client, auth, "bf-small", [OV], memory_gb=0.002)
    assert client.get(f"/v1/versions/{vid}", headers=auth).json()["built_for"] == built
    r = client.post("/v1/rollouts", headers=auth, json={
        "version_id": vid, "selector": {"device_ids": [ort_only]}})
    _problem(r, 409, "built for the runtime openvino-cpu", ORT)
    r = client.post("/v1/rollouts", headers=auth, json={
        "version_id": vid, "selector": {"device_ids": [fits, ort_only, old_ov, small]},
        "wave_timeout_seconds": 600})
    assert r.status_code == 201, r.text
    rows = {d["device_id"]: d for d in client.get(f"/v1/rollouts/{r.json()['id']}/devices",
                                                  headers=auth).json()["data"]}
    assert rows[fits]["status"] == "assigned"
    assert rows[ort_only]["status"] == "skipped"
    assert rows[ort_only]["reason"] == f"built for the runtime openvino-cpu; the device has {ORT}"
    assert rows[old_ov]["reason"] == ("built for openvino-cpu 2026.4 up to (not including) 2027; "
                                      "the device has openvino-cpu 2025.3")
    assert rows[small]["reason"] == f"needs {need} MiB of memory; the device has 2 MiB"
    assert client.post(f"/v1/rollouts/{r.json()['id']}/abort", headers=auth).status_code == 200


@pytest.mark.parametrize("number,runtimes,device,want", [
    (91, ["openvino-cpu"], [OV, ORT], ["openvino-cpu"]),
    (92, None, [OV, ORT], ["onnxruntime-cpu", "openvino-cpu"]),  # no record: the profile's
    # built with ONNX Runtime 1.32; this device's 1.20 is older: OpenVINO runs it there
    (93, ["onnxruntime-cpu", "openvino-cpu"], ["onnxruntime-cpu-1.20", OV], ["openvino-cpu"]),
], ids=["built-for", "profile", "runtime-too-old"])
def test_desired_state_names_the_runtimes(client: TestClient, auth: dict, settings: Settings,
                                          tiny_model: dict, tmp_path: Path, number: int,
                                          runtimes: list[str] | None, device: list[str],
                                          want: list[str]) -> None:
    path = make_onnx(tmp_path / "d.onnx", np.ones((8, 4), np.float32))
    vid = insert_version(settings, tiny_model["id"], number, path)
    if runtimes:
        rng = {"min": "1.32", "below": "2"} if runtimes[0] == "onnxruntime-cpu" else \
            {"min": "2026.4", "below": "2027"}
        with session_scope(settings.database_url) as s:
            s.execute(update(ModelVersion).where(ModelVersion.id == vid).values(built_for={
                "isa": "x86_64", "accelerator": "cpu", "flags": [], "runtime": runtimes[0],
                "runtimes": runtimes, "runtime_version": rng, "memory_mb": 1}))
    d = enroll(client, auth, "desired", device_profile(runtimes=device))
    r = client.post("/v1/rollouts", headers=auth, json={
        "version_id": vid, "selector": {"device_ids": [d["device_id"]]},
        "wave_timeout_seconds": 600})
    assert r.status_code == 201, r.text
    got = client.get(f"/v1/devices/{d['device_id']}/desired",
                     headers={"Authorization": f"Bearer {d['credential']}"}).json()
    assert got["runtimes"] == want and got["models"][0]["runtimes"] == want
    client.post(f"/v1/rollouts/{r.json()['id']}/abort", headers=auth)


def test_built_for_names_the_runtime_that_built_it(client: TestClient, auth: dict,
                                                  settings: Settings, tiny_model: dict,
                                                  digits: dict, tmp_path: Path) -> None:
    from cloud_service.tasks.targets import built_for
    from hadmc_core import backends

    path = make_onnx(tmp_path / "b.onnx", np.ones((64, 10), np.float32))
    ort_version = backends.get("onnxruntime").version() or ""
    r = _submit(client, auth, tiny_model, digits, target={"profile": "x86-avx2"})
    got = built_for(_plan(settings, r.json()["id"]), "onnxruntime", path)
    assert got == {"isa": "x86_64", "accelerator": "cpu", "flags": ["avx2", "fma"],
                   "runtime": "onnxruntime-cpu", "runtimes": ["onnxruntime-cpu", "openvino-cpu"],
                   "runtime_version": {"min": ".".join(ort_version.split(".")[:2]),
                                       "below": str(int(ort_version.split(".")[0]) + 1)},
                   "memory_mb": 1}
    dev = _device(client, auth, "bf-ov", [OV])
    p = _plan(settings, _submit(client, auth, tiny_model, digits,
                                target={"device": dev}).json()["id"])
    assert built_for(p, "openvino", path)["runtimes"] == ["openvino-cpu"]
    # a worker without the device's runtime built it with ONNX Runtime: that is what it names
    assert built_for(p, "onnxruntime", path)["runtimes"] == ["onnxruntime-cpu"]
