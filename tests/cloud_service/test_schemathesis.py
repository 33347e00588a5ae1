"""Schemathesis against the app's own OpenAPI document: every operation, a bounded number of
generated requests each (the document's examples, positive and negative data), no 5xx, and
every answer is declared (status code, content type) and matches its declared schema.

The app gets a database of its own (schemathesis revokes tokens, aborts rollouts, retags
devices by random id; none of that reaches the other tests) and is driven through
schemathesis' ASGI transport. Path ids are often pinned to rows that exist (a model,
dataset, job, version, enrollment token, device, rollout made here), so 200 answers are
checked as well as 404s; device-only operations get the device's own credential and id.

schemathesis' pytest plugin (``schema.parametrize()`` / ``from_fixture``) fails on pytest 9
(``Function._nodeid``), so each operation runs its strategies under ``@given`` here."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
    use_after_free,
)

from cloud_service import migrate
from cloud_service.app import create_app
from tests.cloud_service.conftest import (
    create_database,
    drop_database,
    enroll,
    make_onnx,
    make_settings,
    new_user_token,
    publish_onnx,
    upload_model,
)

DEVICE_ONLY = re.compile(r"^/v1/devices/\{device_id\}/"
                         r"(desired|updates|profile|heartbeat|latency)$")
DEVICE_READS = re.compile(r"^/v1/(profiles|versions/\{version_id\}"
                          r"(/(model\.onnx|manifest|delta|probe))?)$")
# Per operation; HADMC_SCHEMATHESIS_EXAMPLES=200 for a longer hunt.
MAX_EXAMPLES = int(os.environ.get("HADMC_SCHEMATHESIS_EXAMPLES", "20"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance,
          ignored_auth,  # the operation answers 401 without or with a bad token
          use_after_free, unsupported_method]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, redis_url: str
               ) -> Iterator[schemathesis.BaseSchema]:
    """The schema, loaded from a fresh app on a fresh database (dropped at the end)."""
    from schemathesis.python.asgi import shutdown_lifespans

    url = create_database()
    try:
        migrate.upgrade(url)
        app = create_app(make_settings(tmp_path_factory.mktemp("schemathesis"),
                                       database_url=url, broker_url=redis_url,
                                       queue=f"hadmc_test_{uuid.uuid4().hex[:8]}"))
        yield schemathesis.openapi.from_asgi("/openapi.json", app)  # starts its lifespan
    finally:
        shutdown_lifespans()
        drop_database(url)


def _ok(r: object, status: int) -> dict:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    return r.json()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def world(api_schema: schemathesis.BaseSchema, tiny_weights: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Rows for the generated requests to find, and the credentials to reach them."""
    app = api_schema.app
    client = TestClient(app)  # no `with`: the lifespan already runs (schemathesis started it)
    auth = {"Authorization": f"Bearer {new_user_token(app.state.settings)}"}
    tiny = upload_model(client, auth, tiny_weights)
    digits = _ok(client.post("/v1/datasets", json={"builtin": "digits"}, headers=auth), 201)
    onnx = make_onnx(tmp_path_factory.mktemp("st") / "m.onnx", np.ones((4, 2), np.float32))
    base = _ok(client.post("/v1/models", params={"name": "st", "format": "onnx"},
                           content=onnx.read_bytes(),
                           headers={**auth, "Content-Type": "application/octet-stream"}), 201)
    v1 = publish_onnx(client, auth, base["id"], onnx.read_bytes())
    v2 = publish_onnx(client, auth, base["id"], make_onnx(
        onnx.with_name("m2.onnx"), np.full((4, 2), 2, np.float32)).read_bytes())
    job = _ok(client.post("/v1/jobs", headers=auth, json={
        "model_id": tiny["id"], "dataset_id": digits["id"], "profile": "x86-avx2"}), 202)
    token = _ok(client.post("/v1/enrollment-tokens", json={}, headers=auth), 201)
    enrolling = _ok(client.post("/v1/enrollment-tokens", json={"max_uses": 1000},
                                headers=auth), 201)
    dev = enroll(client, auth, "schemathesis")
    cred = {"Authorization": f"Bearer {dev['credential']}"}
    _ok(client.post(f"/v1/devices/{dev['device_id']}/updates", headers=cred, json={
        "version_id": v1["id"], "ok": True, "phase": "done", "p50_ms": 1.0}), 201)
    rollout = _ok(client.post("/v1/rollouts", headers=auth, json={
        "version_id": v2["id"], "selector": {"device_ids": [dev["device_id"]]}}), 201)
    ids = {"model_id": base["id"], "dataset_id": digits["id"], "job_id": job["id"],
           "version_id": v2["id"], "from": v1["id"], "token_id": token["id"],
           "device_id": dev["device_id"], "rollout_id": rollout["id"]}
    return {"ids": ids, "user": auth, "device": cred, "enrollment_token": enrolling["token"],
            "settings": app.state.settings}


def _labels() -> list[tuple[str, str]]:
    """(method, path) of every route, from the routers (collection needs no database; a test
    below checks this list against the app's OpenAPI document)."""
    from fastapi.routing import APIRoute

    from cloud_service.api.routes import ROUTERS

    return sorted((m, r.path) for router in ROUTERS for r in router.routes
                  if isinstance(r, APIRoute) for m in r.methods if r.include_in_schema)


OPERATIONS = _labels()


def test_every_operation_is_covered(api_schema: schemathesis.BaseSchema) -> None:
    documented = sorted((m.upper(), p) for p, ops in api_schema.raw_schema["paths"].items()
                        for m in ops)
    assert documented == OPERATIONS


def _strategy(op: schemathesis.APIOperation, world: dict) -> st.SearchStrategy:
    """The document's examples, positive and negative data, and positive data aimed at rows
    that exist (so 200 answers are checked as well as 404s)."""
    ids = world["ids"]
    pinned = {p.name: ids[p.name] for p in op.path_parameters if p.name in ids}
    query = {"from": ids["from"]} if any(p.name == "from" for p in op.query) else None
    cases = [*op.schema.get_strategies_from_examples(op),
             op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)]
    if pinned or query:
        cases.append(op.as_strategy(path_parameters=pinned or None, query=query))
    if op.label == "POST /v1/devices/register":
        cases.append(op.as_strategy(body={"enrollment_token": world["enrollment_token"],
                                          "name": "schemathesis-enrolled"}))
    return st.one_of(cases)


def _headers(case: schemathesis.Case, world: dict, as_device: bool) -> dict[str, str]:
    """Device-only operations get the device's credential and its own id (any other id is
    403 before anything else is looked at); read operations that devices may call get it
    about half of the time; revoking an API token a new user's token; everything else the
    user token."""
    own = world["ids"]["device_id"]
    if case.method == "DELETE" and case.path == "/v1/tokens/{token_id}":
        # A user of its own with a new token each time: revoking by a generated id must
        # never reach the token the other operations use.
        return {"Authorization": f"Bearer {new_user_token(world['settings'], 'revoker')}"}
    if DEVICE_ONLY.match(case.path):
        case.path_parameters = {**(case.path_parameters or {}), "device_id": own}
        return world["device"]
    if as_device and case.method == "GET" and DEVICE_READS.match(case.path):
        return world["device"]
    return world["user"]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms(api_schema: schemathesis.BaseSchema, world: dict, method: str,
                            path: str) -> None:
    op = api_schema[path][method]

    @given(case=_strategy(op, world), as_device=st.booleans())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case, as_device: bool) -> None:
        case.call_and_validate(headers=_headers(case, world, as_device), checks=CHECKS)

    check()
