"""One place that turns errors into ``application/problem+json`` responses (RFC 9457)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_service.errors import ServiceError
from cloud_service.schemas import Problem

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"
_UNDECODABLE = "There was an error parsing the body"  # FastAPI's 400 for a body it can't read

# Documented error statuses: (title, when, an example detail).
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("Bad request", "A malformed `Range` header.",
          "Only support bytes range (Range: 'pages=0-9'); send bytes=START-END, "
          "bytes=START- or bytes=-N"),
    401: ("Unauthorized", "No bearer token, or an unknown, expired or revoked one.",
          "missing bearer token: send `Authorization: Bearer <token>`"),
    403: ("Forbidden", "A token of the wrong kind (user vs device), or another device's "
          "credential.", "a device credential is valid only for its own device"),
    404: ("Not found", "An id that does not exist.", "model version 99 does not exist"),
    409: ("Conflict", "The row's state does not allow it.",
          "job 3 is already succeeded; only queued or running jobs can be cancelled"),
    413: ("Payload too large", "The upload is over HADMC_MAX_UPLOAD_MB.",
          "upload of 600000000 bytes is over the limit of 536870912 bytes "
          "(HADMC_MAX_UPLOAD_MB)"),
    415: ("Unsupported media type", "The body is not `application/octet-stream`.",
          "send the file as the raw body with Content-Type: application/octet-stream "
          "(got application/json)"),
    416: ("Range not satisfiable", "The `Range` starts beyond the end of the file; "
          "`Content-Range: bytes */SIZE` gives its size.",
          "the Range starts beyond the end of the file (11240512 bytes); ask for bytes "
          "within 0-11240511"),
    422: ("Invalid input", "Malformed or invalid parameters, body or file (a JSON body that "
          "does not decode, parse or validate).",
          "query.limit: Input should be less than or equal to 500"),
    429: ("Too many requests", "Rate limit; retry in a minute.",
          "too many device registrations from this address; retry in a minute"),
}
_SCHEMA = Problem.model_json_schema()
_SCHEMA.pop("examples", None)
_SCHEMA["additionalProperties"] = True  # 422 adds `errors`: [{loc, msg}]


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (``application/problem+json``)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        title, when, detail = _ERRORS[status]
        example = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        out[status] = {"description": when, "content": {MEDIA_TYPE: {
            "schema": _SCHEMA, "example": example}}}
    return out


def problem(status: int, title: str, detail: str, **extra: object) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"type": "about:blank", "title": title, "status": status,
                         "detail": detail, **extra}, status_code=status,
                        media_type=MEDIA_TYPE, headers=headers)


def _error_title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install(app: FastAPI) -> None:
    from hadmc_core.errors import HadmcError

    @app.exception_handler(HadmcError)
    async def _hadmc(request: Request, exc: HadmcError) -> JSONResponse:
        if isinstance(exc, ServiceError):
            resp = problem(exc.status, exc.title, str(exc))
            resp.headers.update(exc.response_headers())
            return resp
        return problem(422, "Invalid input", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))}
                  for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(422, "Invalid input", detail or "invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _UNDECODABLE:  # malformed JSON is a 422
            return problem(422, "Invalid input", "the body is not JSON: it does not decode "
                           "(send UTF-8 JSON with Content-Type: application/json)")
        return problem(exc.status_code, _error_title(exc.status_code), str(exc.detail))

    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _pool(request: Request, exc: SQLAlchemyTimeoutError) -> JSONResponse:
        log.warning("database pool exhausted on %s %s", request.method, request.url.path)
        resp = problem(503, "Service unavailable", "the server is overloaded; retry shortly")
        resp.headers["Retry-After"] = "5"
        return resp

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal server error", "unexpected error; see the server log")
