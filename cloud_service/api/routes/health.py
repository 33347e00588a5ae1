"""Liveness, readiness, Prometheus metrics and the profile catalogue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from cloud_service.api.deps import AnyPrincipal, SettingsDep
from cloud_service.metrics import render

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_broker(url: str | None) -> str:
    if not url:
        return "embedded"
    import redis

    redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
    return "ok"


@router.get("/readyz", summary="Readiness: database and broker reachable",
            responses={503: {"description": "A dependency is down"}})
def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"error: {type(e).__name__}"
    try:
        checks["broker"] = _check_broker(settings.broker_url)
    except Exception as e:
        checks["broker"] = f"error: {type(e).__name__}"
    ok = all(v in ("ok", "embedded") for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    body, ctype = render(request.app)
    return Response(body, media_type=ctype)


@router.get("/v1/profiles", summary="Built-in hardware profile names", tags=["profiles"])
def profiles(who: AnyPrincipal) -> dict[str, Any]:
    from hadmc_core.hal import list_profiles

    return {"data": list_profiles()}
