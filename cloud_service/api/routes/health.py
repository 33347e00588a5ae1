"""Liveness, readiness, Prometheus metrics and the profile catalogue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from cloud_service import schemas_examples as ex
from cloud_service.api.deps import AnyPrincipal, SettingsDep
from cloud_service.api.problems import problems
from cloud_service.metrics import check_token, render
from cloud_service.schemas import ProfilesPublic

router = APIRouter(tags=["health"])


def _json(description: str, example: object) -> dict:
    return {"description": description, "content": {"application/json": {"example": example}}}


@router.get("/healthz", summary="Liveness: the process answers",
            description="Always `{\"status\": \"ok\"}` while the process serves requests; "
                        "checks nothing else (see /readyz). Anyone, no token.",
            responses={200: _json("The process is alive.", ex.HEALTH)})
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_broker(url: str | None) -> str:
    if not url:
        return "embedded"
    import redis

    redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
    return "ok"


@router.get("/readyz", summary="Readiness: database and broker reachable",
            description="Runs `SELECT 1` on the database and pings the broker (`embedded` "
                        "without one). Anyone, no token. 503 with the failing check when a "
                        "dependency is down.",
            responses={200: _json("Ready.", ex.READY),
                       503: _json("A dependency is down.", ex.UNREADY)})
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


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            description="Prometheus text format: fleet gauges read from the database at "
                        "scrape time (`hadmc_devices{state}`, `hadmc_devices_by_version`, "
                        "`hadmc_rollouts{state}`, `hadmc_rollout_devices`, "
                        "`hadmc_update_reports_total`, `hadmc_jobs{state}`, "
                        "`hadmc_job_stage_seconds`, `hadmc_queue_depth`, ...) and request "
                        "and download counters summed over the API's processes "
                        "(`docs/service.md`). Anyone, unless `HADMC_METRICS_TOKEN` is set: "
                        "then `Authorization: Bearer <that token>` (401 otherwise).",
            responses={200: {"description": "Prometheus exposition format.", "content": {
                "text/plain": {
                    "schema": {"type": "string"}, "example": ex.METRICS}}},
                **problems(401)})
def metrics(request: Request, settings: SettingsDep) -> Response:
    check_token(settings, request.headers.get("authorization"))
    body, ctype = render(request.app)
    return Response(body, media_type=ctype)


@router.get("/v1/profiles", summary="Built-in hardware profile names", tags=["profiles"],
            response_model=ProfilesPublic, responses=problems(401),
            description="Names that jobs and published versions accept as `profile`. Users "
                        "and devices. 401 without a valid token.")
def profiles(who: AnyPrincipal) -> dict[str, Any]:
    from hadmc_core.hal import list_profiles

    return {"data": list_profiles()}
