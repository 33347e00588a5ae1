"""The OpenAPI document, with the schemas' examples served as written.

FastAPI builds the document with ``exclude_none``, which also strips ``null`` values out of
examples, so an example of a response with a nullable required field (``finished_at:
null``) would no longer match its own schema. The examples are put back after the build."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from cloud_service import schemas, schemas_rollouts


def _model_examples() -> dict[str, list[Any]]:
    out = {}
    for module in (schemas, schemas_rollouts):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, BaseModel):
                extra = value.model_config.get("json_schema_extra")
                if isinstance(extra, dict) and isinstance(extra.get("examples"), list):
                    out[name] = list(extra["examples"])  # type: ignore[arg-type]
    return out


def restore_examples(doc: dict[str, Any]) -> None:
    examples = _model_examples()
    for key, schema in doc.get("components", {}).get("schemas", {}).items():
        name = key.removesuffix("-Input").removesuffix("-Output")
        if name in examples and "examples" in schema:
            schema["examples"] = copy.deepcopy(examples[name])


def install(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            restore_examples(build())  # build() caches the document in app.openapi_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
