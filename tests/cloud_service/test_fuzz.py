"""Property test: random path ids, query values and JSON bodies on every operation of
the OpenAPI document never give a 5xx. It complements test_schemathesis.py (which generates
from the document's schemas and checks the answers against it) with inputs the document does
not describe: undeclared query names, ids past 32 bits, raw bodies on JSON operations, every
operation with no token, a user token and a device credential."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cloud_service.conftest import enroll

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12)
SCALAR = (st.integers(-(2**70), 2**70) | st.text(max_size=30) | st.sampled_from(
    ["x86-avx2", "digits", "safetensors", "onnx", "queued", "densenet", "-1", "1e999"]))


def _operations(app: FastAPI) -> list[tuple[str, str, list[str]]]:
    ops = []
    for path, methods in app.openapi()["paths"].items():
        for method, op in methods.items():
            query = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            ops.append((method.upper(), path, query))
    return ops


def _fields(body: object) -> dict:
    return body if isinstance(body, dict) else {}


@pytest.fixture(scope="module")
def device_headers(client: TestClient, auth: dict) -> tuple[int, dict]:
    dev = enroll(client, auth, "fuzz")
    return dev["device_id"], {"Authorization": f"Bearer {dev['credential']}"}


def test_no_server_errors_on_random_input(app: FastAPI, client: TestClient, auth: dict,
                                          device_headers: tuple[int, dict]) -> None:
    own_id, dev = device_headers
    ops = _operations(app)

    @settings(max_examples=250, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(op=st.sampled_from(ops), ids=st.lists(st.integers(-(2**70), 2**70) | st.just(own_id),
                                                  min_size=3, max_size=3),
           query=st.dictionaries(st.text(max_size=10), SCALAR, max_size=3),
           named=st.lists(SCALAR, min_size=8, max_size=8), body=JSON,
           who=st.sampled_from(["user", "device", "none"]), raw=st.booleans())
    def check(op, ids, query, named, body, who, raw):  # type: ignore[no-untyped-def]
        method, path, qnames = op
        url = path
        for i, name in enumerate(re.findall(r"{(\w+)}", path)):
            url = url.replace("{" + name + "}", str(ids[i]))
        params = {**query, **{q: named[i] for i, q in enumerate(qnames)}}
        headers = {"user": auth, "device": dev, "none": {}}[who]
        kw: dict = {"params": {k: str(v) for k, v in params.items()}, "headers": dict(headers)}
        if method in ("POST", "PUT", "PATCH"):
            if raw:
                kw["content"] = repr(body).encode()
                kw["headers"]["Content-Type"] = "application/octet-stream"
            else:
                kw["json"] = body
        r = client.request(method, url, **kw)
        assert r.status_code < 500, f"{method} {url} {kw} -> {r.status_code} {r.text}"

    check()
