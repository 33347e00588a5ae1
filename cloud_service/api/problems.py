"""One place that turns errors into ``application/problem+json`` responses (RFC 9457)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_service.errors import ServiceError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


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
            return problem(exc.status, exc.title, str(exc))
        return problem(422, "Invalid input", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))}
                  for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem(422, "Invalid input", detail or "invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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
