"""Names and other stored strings with control characters are refused with 422, in JSON
bodies and query parameters alike. PostgreSQL cannot store NUL (it answered 500) and other
backends stored every control character silently."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.cloud_service.conftest import enroll, make_onnx, publish_onnx

OCTET = {"Content-Type": "application/octet-stream"}
# Names refuse every control character; free text (an update's reason) keeps tab and
# line breaks.
NAME_BAD = {"nul": "a\x00b", "escape": "a\x1b[31mb", "delete": "a\x7fb",
            "newline": "line\nbreak", "c1-next-line": "a\x85b"}
TEXT_BAD = {k: v for k, v in NAME_BAD.items() if k != "newline"}


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    w = np.ones((4, 2), np.float32)
    return make_onnx(tmp_path_factory.mktemp("names") / "m.onnx", w).read_bytes()


@pytest.fixture(scope="module")
def fleet(client: TestClient, auth: dict, tiny_model: dict, digits: dict,
          onnx_bytes: bytes) -> dict[str, Any]:
    """What the requests refer to: a device, a version, a model, a dataset, an enrollment
    token with uses to spare."""
    dev = enroll(client, auth, "names-dev")
    r = client.post("/v1/enrollment-tokens", json={"max_uses": 1000}, headers=auth)
    assert r.status_code == 201, r.text
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros((20, 8, 8), np.float32), y=np.arange(20) % 2)
    return {"device": dev["device_id"], "me": {"Authorization": f"Bearer {dev['credential']}"},
            "version": publish_onnx(client, auth, tiny_model["id"], onnx_bytes)["id"],
            "model": tiny_model["id"], "dataset": digits["id"],
            "enrollment_token": r.json()["token"], "npz": npz.getvalue(), "onnx": onnx_bytes}


Request = Callable[[str, dict[str, Any], dict[str, str]], dict[str, Any]]
# Each: the request (method, url, json/params/content, headers) that stores the value.
CASES: dict[str, Request] = {
    "enrollment-token-name": lambda v, f, user: {
        "method": "POST", "url": "/v1/enrollment-tokens", "json": {"name": v},
        "headers": user},
    "api-token-name": lambda v, f, user: {
        "method": "POST", "url": "/v1/tokens", "json": {"name": v}, "headers": user},
    "dataset-name": lambda v, f, user: {
        "method": "POST", "url": "/v1/datasets", "json": {"builtin": "digits", "name": v},
        "headers": user},
    "dataset-upload-name-query": lambda v, f, user: {
        "method": "POST", "url": "/v1/datasets/upload", "params": {"name": v},
        "content": f["npz"], "headers": {**user, **OCTET}},
    "model-name-query": lambda v, f, user: {
        "method": "POST", "url": "/v1/models", "params": {"name": v, "format": "onnx"},
        "content": f["onnx"], "headers": {**user, **OCTET}},
    "device-name": lambda v, f, user: {
        "method": "POST", "url": "/v1/devices/register",
        "json": {"enrollment_token": f["enrollment_token"], "name": v}},
    "heartbeat-status": lambda v, f, user: {
        "method": "POST", "url": f"/v1/devices/{f['device']}/heartbeat",
        "json": {"status": v}, "headers": f["me"]},
    "job-profile": lambda v, f, user: {
        "method": "POST", "url": "/v1/jobs",
        "json": {"model_id": f["model"], "dataset_id": f["dataset"], "profile": v},
        "headers": user},
    "version-profile-query": lambda v, f, user: {
        "method": "POST", "url": f"/v1/models/{f['model']}/versions", "params": {"profile": v},
        "content": f["onnx"], "headers": {**user, **OCTET}},
}
# Tags keep their own pattern (letters, digits, `_.:-`), which says so.
PATTERN_CASES: dict[str, Request] = {
    "device-tag": lambda v, f, user: {
        "method": "PATCH", "url": f"/v1/devices/{f['device']}", "json": {"tags": [v]},
        "headers": user},
}
TEXT_CASES: dict[str, Request] = {
    "update-reason": lambda v, f, user: {
        "method": "POST", "url": f"/v1/devices/{f['device']}/updates",
        "json": {"version_id": f["version"], "ok": False, "phase": "download", "reason": v},
        "headers": f["me"]},
}


def _send(client: TestClient, request: dict[str, Any]) -> Any:
    return client.request(request.pop("method"), request.pop("url"), **request)


def _refused(r: Any, says: str = "control character") -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert says in r.json()["detail"]


@pytest.mark.parametrize("value", NAME_BAD.values(), ids=NAME_BAD.keys())
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_names_with_control_characters_are_422(client: TestClient, auth: dict,
                                               fleet: dict, case: Request, value: str) -> None:
    _refused(_send(client, case(value, fleet, auth)))


@pytest.mark.parametrize("value", NAME_BAD.values(), ids=NAME_BAD.keys())
@pytest.mark.parametrize("case", PATTERN_CASES.values(), ids=PATTERN_CASES.keys())
def test_tags_with_control_characters_are_422(client: TestClient, auth: dict, fleet: dict,
                                              case: Request, value: str) -> None:
    _refused(_send(client, case(value, fleet, auth)), says="should match pattern")


@pytest.mark.parametrize("value", TEXT_BAD.values(), ids=TEXT_BAD.keys())
@pytest.mark.parametrize("case", TEXT_CASES.values(), ids=TEXT_CASES.keys())
def test_text_with_control_characters_is_422(client: TestClient, auth: dict, fleet: dict,
                                             case: Request, value: str) -> None:
    _refused(_send(client, case(value, fleet, auth)))


def test_other_characters_are_kept(client: TestClient, auth: dict, fleet: dict) -> None:
    name = "Línea 3 — défauts ✓ 検査"
    r = client.post("/v1/enrollment-tokens", json={"name": name}, headers=auth)
    assert r.status_code == 201 and r.json()["name"] == name
    r = client.post("/v1/datasets/upload", params={"name": name}, content=fleet["npz"],
                    headers={**auth, **OCTET})
    assert r.status_code == 201 and r.json()["name"] == name
    r = _send(client, TEXT_CASES["update-reason"]("smoke test failed:\n\tmax error 3.2", fleet,
                                                   auth))
    assert r.status_code == 201, r.text
