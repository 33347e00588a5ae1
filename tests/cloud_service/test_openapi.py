"""The OpenAPI document: every operation has a summary, a description and at least one
example (in its parameters, request body or responses, following $ref into components), and
every example in it is valid against the schema it illustrates. Plus the responses that
schemathesis found undocumented, checked against what the app really sends."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate as validate_openapi
from pydantic import BaseModel
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from cloud_service import schemas, schemas_rollouts

METHODS = ("get", "put", "post", "delete", "patch")
DOC_URI = "urn:hadmc:openapi"


@pytest.fixture(scope="module")
def doc(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield f"{method.upper()} {path}", item[method]


def _ref_path(ref: str) -> list[str]:
    assert ref.startswith("#/"), ref
    return ref[2:].split("/")


def _has_example(doc: dict[str, Any], node: Any, seen: set[str] | None = None) -> bool:
    """An ``example`` or ``examples`` anywhere under ``node``, following $ref (property
    names are never taken for keywords)."""
    seen = set() if seen is None else seen
    if isinstance(node, list):
        return any(_has_example(doc, n, seen) for n in node)
    if not isinstance(node, dict):
        return False
    if "$ref" in node:
        if node["$ref"] in seen:
            return False
        seen.add(node["$ref"])
        target = doc
        for part in _ref_path(node["$ref"]):
            target = target[part]
        return _has_example(doc, target, seen)
    if "example" in node or "examples" in node:
        return True
    return any(_has_example(doc, v, seen) for k, v in node.items()
               if k != "properties") or any(
        _has_example(doc, v, seen) for v in node.get("properties", {}).values())


def test_document_is_valid_openapi(doc: dict[str, Any]) -> None:
    validate_openapi(doc)


def test_every_operation_has_summary_description_and_an_example(doc: dict[str, Any]) -> None:
    missing = []
    for label, op in _operations(doc):
        for key in ("summary", "description"):
            if not str(op.get(key, "")).strip():
                missing.append(f"{label}: no {key}")
        where = [op.get("parameters", []), op.get("requestBody", {}), op.get("responses", {})]
        if not any(_has_example(doc, part) for part in where):
            missing.append(f"{label}: no example")
    assert not missing, "\n".join(missing)
    assert len(list(_operations(doc))) >= 45


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for ``schema`` (inline or a $ref) whose ``#/components/...`` refs point
    into the document."""
    schema = copy.deepcopy(schema)

    def rebase(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
                node["$ref"] = DOC_URI + node["$ref"]
            for v in node.values():
                rebase(v)
        elif isinstance(node, list):
            for v in node:
                rebase(v)

    rebase(schema)
    registry: Registry = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012))
    return Draft202012Validator(schema, registry=registry, format_checker=FormatChecker())


def _examples(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example) for every example in the document."""
    for name, schema in doc["components"]["schemas"].items():
        for i, ex in enumerate(schema.get("examples", [])):
            yield f"components.{name}[{i}]", schema, ex
    for label, op in _operations(doc):
        for p in op.get("parameters", []):
            schema = p.get("schema", {})
            for i, ex in enumerate(schema.get("examples", [])):
                yield f"{label} {p['name']}[{i}]", schema, ex
            if "example" in p:
                yield f"{label} {p['name']}", schema, p["example"]
        contents = [("request", op.get("requestBody", {}).get("content", {}))]
        contents += [(status, r.get("content", {})) for status, r in op["responses"].items()]
        for where, content in contents:
            for media, body in content.items():
                schema = body.get("schema", {})
                if "example" in body:
                    yield f"{label} {where} {media}", schema, body["example"]
                for key, ex in body.get("examples", {}).items():
                    yield f"{label} {where} {media} {key}", schema, ex["value"]


def test_every_example_is_valid_against_its_schema(doc: dict[str, Any]) -> None:
    found = list(_examples(doc))
    assert len(found) > 60
    errors = []
    for where, schema, example in found:
        for e in _validator(doc, schema).iter_errors(example):
            errors.append(f"{where}: {e.message} at {list(e.absolute_path)}")
    assert not errors, "\n".join(errors)


def _models() -> list[type[BaseModel]]:
    out = []
    for module in (schemas, schemas_rollouts):
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseModel)
                    and value.__module__ == module.__name__
                    and (value.model_config.get("json_schema_extra") or {})):
                out.append(value)
    return out


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.__name__)
def test_model_examples_pass_the_model_itself(model: type[BaseModel]) -> None:
    """Also the checks JSON Schema cannot express (e.g. RolloutCreate's waves, Selector's
    exactly-one rule)."""
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict) and extra["examples"], model
    for example in extra["examples"]:
        model.model_validate(example)


# Findings of tests/cloud_service/test_schemathesis.py, now documented; each is checked
# against the real answer so the document cannot drift from the app again.

def test_errors_are_documented_as_problem_json(doc: dict[str, Any], client: TestClient,
                                               auth: dict) -> None:
    """Undocumented 401/403/404/409 and a 422 declared as FastAPI's HTTPValidationError
    (`application/json`) while the app answers `application/problem+json`."""
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for label, op in _operations(doc):
        for status, response in op["responses"].items():
            if status.startswith("4"):
                assert list(response["content"]) == ["application/problem+json"], label
        if " /v1/" in label and label != "POST /v1/devices/register":
            assert "401" in op["responses"], label
    r = client.get("/v1/datasets", params={"limit": 0}, headers=auth)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["loc"] == ["query", "limit"]
    r = client.post("/v1/jobs/2147483647/cancel", headers=auth)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_undecodable_json_body_is_a_422(doc: dict[str, Any], client: TestClient,
                                        auth: dict) -> None:
    """A JSON body that is not UTF-8 is malformed JSON: 422 (FastAPI alone answers 400)."""
    r = client.post("/v1/datasets", content=b"\xff\xfe{", headers={
        **auth, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert "does not decode" in r.json()["detail"]
    for label, op in _operations(doc):
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            assert "422" in op["responses"] and "400" not in op["responses"], label


def test_download_range_errors_are_documented(doc: dict[str, Any]) -> None:
    """A malformed or unsatisfiable Range is a problem (400/416) like every other error;
    a 416 says the file's size in Content-Range."""
    for path in ("/v1/versions/{version_id}/model.onnx", "/v1/versions/{version_id}/delta",
                 "/v1/versions/{version_id}/probe"):
        op = doc["paths"][path]["get"]
        assert any(p["name"] == "Range" for p in op["parameters"]), path
        for status in ("400", "416"):
            assert list(op["responses"][status]["content"]) == ["application/problem+json"]
        assert "Content-Range" in op["responses"]["416"]["headers"], path
        assert "multipart/byteranges" in op["responses"]["206"]["content"], path
