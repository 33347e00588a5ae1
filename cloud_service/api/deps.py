"""Annotated dependencies shared by the routes: session, settings, store, principals, roles.

Dependencies that do no I/O are ``async def`` so they run on the event loop instead of
costing a hop through the thread pool on every request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from cloud_service.errors import AuthenticationError, PermissionDeniedError
from cloud_service.schemas import MAX_ID
from cloud_service.services.auth import ROLES, Principal, Role, resolve
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


#: Any user API token (every role); a device credential gets 403.
CurrentUser = Annotated[Principal, Depends(get_current_user)]


def check_role(user: Principal, role: Role) -> Principal:
    """``user`` when its role is ``role`` or above; else 403 naming the role needed."""
    if not user.has_role(role):
        above = ROLES[ROLES.index(role) + 1:]
        needed = f"the {role} role" + (f" (or {' or '.join(above)})" if above else "")
        raise PermissionDeniedError(
            f"this needs {needed}; this token's role is {user.role}. An admin creates "
            "tokens of a role with `hadmc token create --role ROLE` or POST /v1/tokens")
    return user


def require_role(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency: a user token whose role is ``role`` or above (403 naming the role
    needed otherwise; a device credential gets the 403 of ``CurrentUser``)."""

    async def check(user: CurrentUser) -> Principal:
        return check_role(user, role)

    check.__name__ = f"require_{role}"
    return check


#: Reading (every GET a user may do): every role.
ViewerUser = Annotated[Principal, Depends(require_role("viewer"))]
#: Creating and changing models, datasets, jobs, versions, devices, rollouts: operator, admin.
OperatorUser = Annotated[Principal, Depends(require_role("operator"))]
#: API tokens, keys and settings: admin only.
AdminUser = Annotated[Principal, Depends(require_role("admin"))]
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
