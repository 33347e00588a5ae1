"""/v1/enrollment-tokens and /v1/devices: enrolling and tracking edge devices."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict, deque
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from cloud_service import schemas_examples as ex
from cloud_service.api.deps import (
    BearerDep,
    DeviceId,
    Limit,
    Offset,
    OperatorUser,
    OwnDevice,
    PathId,
    SessionDep,
    SettingsDep,
    UserOrOwnDevice,
    ViewerUser,
    WideLimit,
    bearer_token,
    check_own_device,
)
from cloud_service.api.problems import problems
from cloud_service.errors import NotFoundError, RateLimitedError
from cloud_service.schemas import (
    DevicePublic,
    DeviceRegister,
    DeviceRegistered,
    DeviceUpdate,
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
    EnrollmentTokenPublic,
    Heartbeat,
    HeartbeatAck,
    LatencyReportCreate,
    Page,
)
from cloud_service.schemas_rollouts import DesiredPublic, UpdateReportCreate, UpdateReportPublic
from cloud_service.services import desired as desired_svc
from cloud_service.services import devices as svc
from cloud_service.services.auth import resolve

router = APIRouter(prefix="/v1", tags=["devices"], responses=problems(401, 403, 422))
DEVICE_ONLY = ("The device itself only (its credential): 401 without one, 403 for a user "
               "token or another device's credential, 404 for an unknown device.")


class RateLimiter:
    """Sliding window per client address (per process)."""

    def __init__(self) -> None:
        self.hits: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def check(self, key: str, per_minute: int) -> None:
        now = time.monotonic()
        with self.lock:
            hits = self.hits[key]
            while hits and hits[0] < now - 60:
                hits.popleft()
            if len(hits) >= per_minute:
                raise RateLimitedError("too many device registrations from this address; "
                                       "retry in a minute")
            hits.append(now)


@router.post("/enrollment-tokens", status_code=201, response_model=EnrollmentTokenCreated,
             summary="Create an enrollment token", tags=["enrollment"],
             description="A token that enrolls up to `max_uses` devices until it expires; the "
                         "token itself is in this answer only (stored hashed). Operator or admin "
                         "role.")
def create_token(body: EnrollmentTokenCreate, session: SessionDep,
                 user: OperatorUser) -> EnrollmentTokenCreated:
    row, token = svc.create_enrollment_token(session=session, name=body.name,
                                             expires_in_seconds=body.expires_in_seconds,
                                             max_uses=body.max_uses, created_by=user.id)
    session.commit()
    data = EnrollmentTokenPublic.model_validate(row).model_dump()
    return EnrollmentTokenCreated(**data, token=token)


@router.get("/enrollment-tokens", response_model=Page[EnrollmentTokenPublic],
            summary="List enrollment tokens", tags=["enrollment"],
            description="Tokens (never the secrets), newest first, with uses and expiry. "
                        "Any user role.")
def list_tokens(session: SessionDep, user: ViewerUser, offset: Offset = 0,
                limit: Limit = 50) -> Page[EnrollmentTokenPublic]:
    rows, count = svc.list_enrollment_tokens(session=session, offset=offset, limit=limit)
    return Page[EnrollmentTokenPublic](
        data=[EnrollmentTokenPublic.model_validate(r) for r in rows], count=count)


@router.delete("/enrollment-tokens/{token_id}", response_model=EnrollmentTokenPublic,
               summary="Revoke an enrollment token", tags=["enrollment"],
               responses=problems(404, 409),
               description="No more devices enroll with it; devices that did keep their "
                           "credentials. Operator or admin role. 404 for an unknown id, 409 when "
                           "already revoked.")
def revoke_token(token_id: PathId, session: SessionDep,
                 user: OperatorUser) -> EnrollmentTokenPublic:
    row = svc.revoke_enrollment_token(session=session, token_id=token_id)
    if row is None:
        raise NotFoundError(f"enrollment token {token_id} does not exist")
    session.commit()
    return EnrollmentTokenPublic.model_validate(row)


@router.post("/devices/register", status_code=201, response_model=DeviceRegistered,
             summary="Enroll a device",
             responses=problems(429),
             description="Spends one use of an enrollment token; returns the device's "
                         "credential and the server's manifest-signing public key (pin it). "
                         "Needs no bearer token. 401 for an unknown, expired, revoked or "
                         "used-up enrollment token, 422 for an invalid profile, 429 when "
                         "this address registers too often.")
def register(body: DeviceRegister, request: Request, session: SessionDep,
             settings: SettingsDep) -> DeviceRegistered:
    request.app.state.enroll_limiter.check(request.client.host if request.client else "?",
                                           settings.enroll_rate_per_minute)
    dev, credential = svc.register_device(session=session,
                                          enrollment_token=body.enrollment_token,
                                          name=body.name, profile=body.profile)
    session.commit()
    return DeviceRegistered(device_id=dev.id, credential=credential,
                            manifest_public_key=request.app.state.public_key_pem)


@router.get("/devices", response_model=Page[DevicePublic], summary="List devices",
            description="Devices by id with current version, tags, last seen and who revoked "
                        "them or set their tags. Any user role.")
def list_devices(request: Request, session: SessionDep, user: ViewerUser, offset: Offset = 0,
                 limit: WideLimit = 100) -> Page[DevicePublic]:
    _flush_heartbeats(request)
    rows, count = svc.list_devices(session=session, offset=offset, limit=limit)
    return Page[DevicePublic](data=[DevicePublic.model_validate(r) for r in rows], count=count)


def _flush_heartbeats(request: Request) -> None:
    """Read-your-writes within this process: heartbeats it accepted are written first."""
    if request.app.state.heartbeats is not None:
        request.app.state.heartbeats.flush()


def _found(dev: Any, device_id: int) -> DevicePublic:
    if dev is None:
        raise NotFoundError(f"device {device_id} does not exist")
    return DevicePublic.model_validate(dev)


@router.get("/devices/{device_id}", response_model=DevicePublic, summary="Get a device",
            responses=problems(404),
            description="Profile, latency table, tags, current and previous version, bytes "
                        "downloaded, last seen. Users, or the device itself (403 for another "
                        "device's credential). 404 for an unknown id.")
def get_device(device_id: PathId, request: Request, session: SessionDep,
               who: UserOrOwnDevice) -> DevicePublic:
    _flush_heartbeats(request)
    return _found(svc.get_device(session=session, device_id=device_id), device_id)


@router.put("/devices/{device_id}/profile", response_model=DevicePublic,
            summary="Upload the device's hardware profile (device only)",
            responses=problems(404),
            description="Replaces the device's hardware profile (the hadmc_core.hal profile "
                        "schema; 422 when it does not validate). " + DEVICE_ONLY,
            openapi_extra={"requestBody": {"content": {"application/json": {
                "example": ex.PROFILE}}}})
def put_profile(device_id: PathId, session: SessionDep, me: OwnDevice,
                profile: Annotated[dict[str, Any], Body()]) -> DevicePublic:
    dev = svc.set_profile(session=session, device_id=device_id, profile=profile)
    session.commit()
    return _found(dev, device_id)


def _heartbeat(request: Request, device_id: int, token: str, body: Heartbeat) -> HeartbeatAck:
    recorder = request.app.state.heartbeats
    claims, multi = body.claims(), body.models is not None
    with request.app.state.sessionmaker() as session:
        if claims:  # authenticate before saying whether a version exists
            check_own_device(resolve(session=session, token=token), device_id)
        if recorder is not None:
            seen = recorder.record(session, device_id, token, claims, body.status, multi)
        else:
            seen = svc.heartbeat(session=session, device_id=device_id, credential=token,
                                 claims=claims, status=body.status, multi=multi)
            session.commit()
        if seen is not None:
            return HeartbeatAck(device_id=device_id, last_seen_at=seen)
        check_own_device(resolve(session=session, token=token), device_id)  # 401 or 403
        raise NotFoundError(f"device {device_id} does not exist")


@router.post("/devices/{device_id}/heartbeat", response_model=HeartbeatAck,
             summary="Heartbeat (device only)",
             description="Records last seen, status and the version the device runs of each "
                         "model (`models`; agents that run one model send "
                         "`current_version_id`). Written in batches "
                         "(HADMC_HEARTBEAT_FLUSH_SECONDS); reads through the same API process "
                         "see it at once. 422 for a version that does not exist or is not of "
                         "the model named with it. "
                         + DEVICE_ONLY, responses=problems(404))
async def heartbeat(device_id: DeviceId, body: Heartbeat, request: Request,
                    creds: BearerDep) -> HeartbeatAck:
    # The hottest endpoint. A credential checked in the last minute is answered from memory
    # on the event loop (write-behind, services/heartbeats.py); otherwise one thread hop
    # authenticates against the database (the same 401/403 rules as OwnDevice).
    token = bearer_token(creds)
    recorder = request.app.state.heartbeats
    if recorder is not None:
        seen = recorder.record_cached(device_id, token, body.claims(), body.status,
                                      body.models is not None)
        if seen is not None:
            return HeartbeatAck(device_id=device_id, last_seen_at=seen)
    return await run_in_threadpool(_heartbeat, request, device_id, token, body)


@router.post("/devices/{device_id}/latency", response_model=DevicePublic,
             summary="Report measured latency (device only)",
             responses=problems(404),
             description="The per-operator latency table (at start) and the p50/p99 of a "
                         "version (after an update). 422 for a version that does not exist. "
                         + DEVICE_ONLY)
def report_latency(device_id: PathId, body: LatencyReportCreate, session: SessionDep,
                   me: OwnDevice) -> DevicePublic:
    dev = svc.report_latency(session=session, device_id=device_id, version_id=body.version_id,
                             p50_ms=body.p50_ms, p99_ms=body.p99_ms, operators=body.operators)
    session.commit()
    return _found(dev, device_id)


@router.patch("/devices/{device_id}", response_model=DevicePublic,
              summary="Set a device's tags (user)", responses=problems(404),
              description="Replaces the device's tags (rollouts select by tag). Operator or admin "
                          "role. 404 for an unknown id, 422 for an invalid tag.")
def update_device(device_id: PathId, body: DeviceUpdate, session: SessionDep,
                  user: OperatorUser) -> DevicePublic:
    dev = svc.set_tags(session=session, device_id=device_id, tags=body.tags, by=user.id)
    session.commit()
    return _found(dev, device_id)


@router.delete("/devices/{device_id}", response_model=DevicePublic,
               summary="Revoke a device (user)", responses=problems(404, 409),
               description="Its credential stops working at once (a heartbeat answered from "
                           "another API process's memory may still be accepted for up to a minute; "
                           "nothing is written for it) and rollouts no longer select it. To use "
                           "the device again, enroll it anew. Operator or admin role. 404 for an "
                           "unknown id, 409 when already revoked.")
def revoke_device(device_id: PathId, request: Request, session: SessionDep,
                  user: OperatorUser) -> DevicePublic:
    dev = svc.revoke_device(session=session, device_id=device_id, by=user.id)
    session.commit()
    if dev is not None and request.app.state.heartbeats is not None:
        request.app.state.heartbeats.forget(device_id)
    return _found(dev, device_id)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


@router.get("/devices/{device_id}/desired", response_model=DesiredPublic,
            summary="The versions this device should run (device only)",
            description="Per model in `models`; the top-level fields are the primary "
                        "model's (an agent that runs one model reads only those). "
                        "Conditional: send the last ETag as If-None-Match to get 304 when "
                        "nothing changed. `rollback_order` (signed) is present when a "
                        "version is lower than one the device accepted. " + DEVICE_ONLY,
            responses={304: {"description": "Not modified: the ETag still matches."},
                       200: {"headers": {"ETag": {"schema": {"type": "string"},
                                                  "example": '"3f1c0e9a5b7d2c4e8f6a1b3d5c7e9f01"',
                                                  "description": "Send as If-None-Match."}}},
                       **problems(404)})
def get_desired(device_id: PathId, request: Request, session: SessionDep, me: OwnDevice,
                if_none_match: Annotated[str | None, Header(
                    examples=['"3f1c0e9a5b7d2c4e8f6a1b3d5c7e9f01"'])] = None) -> Response:
    body = desired_svc.desired_state(session=session, device_id=device_id,
                                     key=request.app.state.signing_key)
    if body is None:
        raise NotFoundError(f"device {device_id} does not exist")
    etag = '"' + hashlib.sha256(desired_svc.canonical(body)).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(DesiredPublic(**body).model_dump(mode="json"), headers=headers)


@router.post("/devices/{device_id}/updates", status_code=201,
             response_model=UpdateReportPublic,
             summary="Report an update or rollback attempt (device only)",
             responses=problems(404),
             description="The outcome of one update or rollback (phase, reason, measured "
                         "latency); it moves the device's row in the rollout (succeeded or "
                         "failed). 422 for an unknown version or rollout. " + DEVICE_ONLY)
def report_update(device_id: PathId, body: UpdateReportCreate, session: SessionDep,
                  me: OwnDevice) -> UpdateReportPublic:
    row = desired_svc.report_update(session=session, device_id=device_id,
                                    report=body.model_dump())
    if row is None:
        raise NotFoundError(f"device {device_id} does not exist")
    session.commit()
    return UpdateReportPublic.model_validate(row)
