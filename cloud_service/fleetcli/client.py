"""A small HTTP client for the HAD-MC REST API and the errors the fleet CLI prints."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

#: Exit codes of the fleet commands (documented in docs/cli.md).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4


class FleetError(Exception):
    """A one-line error for the operator; ``exit_code`` is what the command exits with."""

    exit_code = EXIT_FAILED


class UsageError(FleetError):
    exit_code = EXIT_USAGE


class UnreachableError(FleetError):
    exit_code = EXIT_UNREACHABLE


class ApiError(FleetError):
    """The server answered with an error status (``application/problem+json``)."""

    def __init__(self, status: int, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {detail}")
        self.status, self.detail, self.body = status, detail, body
        self.exit_code = EXIT_NOT_FOUND if status == 404 else EXIT_FAILED


def _detail(resp: httpx.Response) -> tuple[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return resp.reason_phrase or "error", None
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"]), body
    return resp.reason_phrase or "error", body


def _reason(e: httpx.TransportError) -> str:
    text = str(e).strip()
    if isinstance(e, httpx.TimeoutException):
        return f"timed out: {text}" if text else "timed out"
    return text or type(e).__name__


class FleetClient:
    """``/v1`` calls with a user token; every failure becomes a :class:`FleetError`."""

    def __init__(self, server: str, token: str, timeout: float = 15.0) -> None:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"the server URL must look like http://HOST:PORT, not {server!r} "
                             "(--server or HADMC_SERVER)")
        self.server = server.rstrip("/")
        self._http = httpx.Client(base_url=self.server, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as e:
            raise UnreachableError(f"cannot reach the HAD-MC server at {self.server} "
                                   f"({_reason(e)})") from e
        if resp.status_code >= 400:
            detail, body = _detail(resp)
            if resp.status_code == 401:
                detail += " (check --token or HADMC_TOKEN)"
            raise ApiError(resp.status_code, detail, body)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise FleetError(f"{self.server} answered {resp.status_code} with something "
                             "that is not JSON; is it a HAD-MC server?") from e

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None) -> Any:
        return self.request("POST", path, json=json)

    def patch(self, path: str, json: Any) -> Any:
        return self.request("PATCH", path, json=json)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
