"""Request guard: what is decided about a request body before, and while, it is read.

- A route that needs a bearer token answers 401 before its body is read when the request
  carries none (the answer the route itself would give, without reading the body first).
- JSON bodies are limited to ``HADMC_MAX_JSON_BODY_KB``: from Content-Length before
  anything is read, and counted while a chunked body streams in. Raw uploads keep their own
  limit, ``HADMC_MAX_UPLOAD_MB`` (``api/uploads.py``).
- A body must arrive in time: a JSON body within ``HADMC_BODY_TIMEOUT_SECONDS`` in all, an
  upload with no pause longer than that. Otherwise 408, and the connection is closed.

The checks run at the first read of the body, when the router has matched the route, so a
request without a body (GET) costs nothing here. Headers are timed by the HTTP server
(``cloud_service/httpserver.py``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_service.api.deps import MISSING_TOKEN
from cloud_service.api.problems import problem
from cloud_service.settings import Settings


class BodyRejected(HTTPException):
    """A request refused before or while its body is read; the rest of the body is never
    read, so the connection is closed after the answer."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(status, detail)
        self.title = title


@dataclass(frozen=True)
class Rule:
    needs_token: bool
    upload: bool


def _uses_bearer(dependant: Dependant) -> bool:
    return isinstance(dependant.call, HTTPBearer) or any(
        _uses_bearer(d) for d in dependant.dependencies)


def route_rule(route: Any) -> Rule:
    """Every route that reads the bearer token refuses a request without one (see
    ``api/deps.py``); an upload is a route whose body is ``application/octet-stream``."""
    if not isinstance(route, APIRoute):
        return Rule(needs_token=False, upload=False)
    content = (route.openapi_extra or {}).get("requestBody", {}).get("content", {})
    return Rule(needs_token=_uses_bearer(route.dependant),
                upload="application/octet-stream" in content)


def has_bearer(headers: Headers) -> bool:
    scheme, credentials = get_authorization_scheme_param(headers.get("authorization"))
    return bool(scheme and credentials) and scheme.lower() == "bearer"


class _Body:
    """One request's ``receive``, checked and timed until the body is complete."""

    def __init__(self, guard: RequestGuard, scope: Scope, receive: Receive) -> None:
        self.guard, self.scope, self.inner = guard, scope, receive
        self.started = time.monotonic()
        self.checked = self.done = False
        self.limit: int | None = None
        self.deadline: float | None = None
        self.size = 0

    def _check(self) -> None:
        self.checked = True
        rule = self.guard.rule(self.scope.get("route"))
        headers = Headers(scope=self.scope)
        if rule.needs_token and not has_bearer(headers):
            raise BodyRejected(401, "Unauthorized", MISSING_TOKEN)
        if rule.upload:  # no total deadline; the size limit is the upload's own
            return
        self.limit = self.guard.max_json_bytes
        self.deadline = self.started + self.guard.body_timeout
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            raise self._too_large(int(length))

    def _too_large(self, size: int) -> BodyRejected:
        assert self.limit is not None
        return BodyRejected(413, "Payload too large",
                            f"a JSON body of {size} bytes or more is over the limit of "
                            f"{self.limit} bytes (HADMC_MAX_JSON_BODY_KB)")

    async def receive(self) -> Message:
        if self.done:
            return await self.inner()
        if not self.checked:
            self._check()
        wait = self.guard.body_timeout
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
        try:
            if wait <= 0:
                raise TimeoutError
            with anyio.fail_after(wait):
                message = await self.inner()
        except TimeoutError:
            raise BodyRejected(408, "Request timeout",
                               f"the request body did not arrive within "
                               f"{self.guard.body_timeout:g} s (HADMC_BODY_TIMEOUT_SECONDS)"
                               ) from None
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.limit is not None and self.size > self.limit:
                raise self._too_large(self.size)
            self.done = not message.get("more_body", False)
        else:  # http.disconnect
            self.done = True
        return message


class RequestGuard:
    """Pure ASGI middleware: wraps ``receive`` of every HTTP request."""

    def __init__(self, app: ASGIApp, *, max_json_bytes: int, body_timeout: float) -> None:
        self.app, self.max_json_bytes, self.body_timeout = app, max_json_bytes, body_timeout
        self._rules: dict[int, Rule] = {}

    def rule(self, route: Any) -> Rule:
        key = id(route)
        if key not in self._rules:  # routes live as long as the app
            self._rules[key] = route_rule(route)
        return self._rules[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        await self.app(scope, _Body(self, scope, receive).receive, send)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the guard (before other middleware, so metrics count its answers) and the
    handler that answers its refusals as problems."""

    async def _rejected(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyRejected)
        resp = problem(exc.status_code, exc.title, exc.detail)
        resp.headers["Connection"] = "close"
        return resp

    app.add_exception_handler(BodyRejected, _rejected)
    app.add_middleware(RequestGuard, max_json_bytes=settings.max_json_body_bytes,
                       body_timeout=settings.body_timeout_seconds)
