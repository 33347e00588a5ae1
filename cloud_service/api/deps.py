"""Annotated dependencies shared by the routes: session, settings, store, principals.

Dependencies that do no I/O are ``async def`` so they run on the event loop instead of
costing a hop through the thread pool on every request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from cloud_service.errors import AuthenticationError, PermissionDeniedError
from cloud_service.schemas import MAX_ID
from cloud_service.services.auth import Principal, resolve
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore

_bearer = HTTPBearer(auto_error=False, description="User API token or device credential.")
MISSING_TOKEN = "missing bearer token: send `Authorization: Bearer <token>`"
UNKNOWN_TOKEN = "unknown, expired or revoked token"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SessionDep = Annotated[Session, Depends(get_session)]


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def bearer_token(creds: HTTPAuthorizationCredentials | None) -> str:
    if creds is None:
        raise AuthenticationError(MISSING_TOKEN)
    return creds.credentials


def check_own_device(principal: Principal | None, device_id: int) -> Principal:
    if principal is None:
        raise AuthenticationError(UNKNOWN_TOKEN)
    if principal.kind != "device":
        raise PermissionDeniedError("this endpoint is for devices; use the device credential "
                                    "from /v1/devices/register")
    if principal.id != device_id:
        raise PermissionDeniedError("a device credential is valid only for its own device")
    return principal


def get_principal(session: SessionDep, creds: BearerDep) -> Principal:
    principal = resolve(session=session, token=bearer_token(creds))
    # End the read transaction: the connection goes back to the pool while this request
    # waits for a thread to run its handler (under load, holding it would drain the pool).
    session.commit()
    if principal is None:
        raise AuthenticationError(UNKNOWN_TOKEN)
    return principal


AnyPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_current_user(principal: AnyPrincipal) -> Principal:
    if principal.kind != "user":
        raise PermissionDeniedError("this endpoint needs a user API token, not a device "
                                    "credential")
    return principal


async def get_current_device(principal: AnyPrincipal) -> Principal:
    if principal.kind != "device":
        check_own_device(principal, principal.id)
    return principal


CurrentUser = Annotated[Principal, Depends(get_current_user)]
CurrentDevice = Annotated[Principal, Depends(get_current_device)]
DeviceId = Annotated[int, Path(ge=1, le=MAX_ID, description="Device id.", examples=[5])]
PathId = Annotated[int, Path(ge=1, le=MAX_ID, description="Row id.", examples=[7])]
QueryId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only rows of this id.",
                                      examples=[1])]
Offset = Annotated[int, Query(ge=0, le=MAX_ID, description="Rows to skip.", examples=[0])]

Limit = Annotated[int, Query(ge=1, le=500, description="Page size (1-500).", examples=[50])]
WideLimit = Annotated[int, Query(ge=1, le=1000, description="Page size (1-1000).",
                                 examples=[100])]


async def get_own_device(device_id: DeviceId, device: CurrentDevice) -> Principal:
    return check_own_device(device, device_id)


async def get_user_or_own_device(device_id: DeviceId, principal: AnyPrincipal) -> Principal:
    if principal.kind == "device" and principal.id != device_id:
        raise PermissionDeniedError("a device credential is valid only for its own device")
    return principal


OwnDevice = Annotated[Principal, Depends(get_own_device)]
UserOrOwnDevice = Annotated[Principal, Depends(get_user_or_own_device)]
