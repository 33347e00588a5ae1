"""Users, API tokens and the principal behind a bearer token."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from cloud_service import security
from cloud_service.db import page, utcnow
from cloud_service.errors import ConflictError, InvalidInputError
from cloud_service.models import ApiToken, Device, User

log = logging.getLogger(__name__)

#: The name of the token seeded from ``HADMC_ADMIN_TOKEN``.
ADMIN_TOKEN_NAME = "HADMC_ADMIN_TOKEN"

#: What a user API token may do, each role including the ones before it: viewer reads,
#: operator also changes models, datasets, jobs, versions, devices and rollouts, admin also
#: manages API tokens (and anything about keys and settings).
Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
#: The role of a new token when none is asked for: everything but token management.
DEFAULT_ROLE: Role = "operator"


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" | "device"
    id: int
    #: A user token's role, the user's name and the token's id; None for a device.
    role: str | None = None
    name: str | None = None
    token_id: int | None = None

    def has_role(self, role: Role) -> bool:
        """A user whose role is ``role`` or above it (an unknown role has none)."""
        return (self.kind == "user" and self.role in ROLES
                and ROLES.index(self.role) >= ROLES.index(role))


def create_api_token(*, session: Session, user_id: int, role: Role, name: str = "",
                     expires_in_days: int | None = None, token: str | None = None
                     ) -> tuple[ApiToken, str]:
    """A new token of the user; returns the row and the plaintext token (shown once).
    ``expires_in_days`` None = never expires."""
    if role not in ROLES:
        raise InvalidInputError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    token = token or security.new_token(security.USER_PREFIX)
    expires_at = (utcnow() + timedelta(days=expires_in_days)
                  if expires_in_days is not None else None)
    row = ApiToken(user_id=user_id, name=name, role=role,
                   token_hash=security.hash_token(token), expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def create_user_token(*, session: Session, user_name: str, role: Role = DEFAULT_ROLE,
                      token_name: str = "", expires_in_days: int | None = None,
                      token: str | None = None) -> str:
    """Create (or reuse) a user and give it a new token of ``role``; returns the plaintext
    token."""
    user = session.scalar(select(User).where(User.name == user_name))
    if user is None:
        user = User(name=user_name)
        session.add(user)
        session.flush()
    return create_api_token(session=session, user_id=user.id, role=role, name=token_name,
                            expires_in_days=expires_in_days, token=token)[1]


def user_names(*, session: Session) -> dict[int, str]:
    """Every user's name by id."""
    return {i: n for i, n in session.execute(select(User.id, User.name))}


def actor(*, session: Session, user_id: int | None) -> dict[str, int | str | None]:
    """``{"user_id", "user_name"}`` of the user who acts, for the details of an event."""
    user = session.get(User, user_id) if user_id is not None else None
    return {"user_id": user_id, "user_name": user.name if user is not None else None}


def list_api_tokens(*, session: Session, user_id: int | None = None, offset: int = 0,
                    limit: int = 1000) -> tuple[list[ApiToken], int]:
    """Tokens, newest first, of one user or of all users; and their count."""
    query = select(ApiToken)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return page(session, query, ApiToken.id.desc(), offset, limit)


def revoke_api_token(*, session: Session, token_id: int, user_id: int | None = None
                     ) -> ApiToken | None:
    """Revoke a token (of ``user_id`` when given); None for a missing row (or another user's),
    ConflictError when already revoked."""
    row = session.get(ApiToken, token_id)
    if row is None or (user_id is not None and row.user_id != user_id):
        return None
    if row.revoked_at is not None:
        raise ConflictError(f"API token {token_id} is already revoked")
    row.revoked_at = utcnow()
    session.flush()
    return row


def sync_admin_token(*, session: Session, token: str | None) -> None:
    """Make ``token`` (``HADMC_ADMIN_TOKEN``) a valid admin token of the user ``admin`` and
    revoke every token seeded from an earlier value; with ``token`` None, revoke them all."""
    digest = security.hash_token(token) if token is not None else None
    res = session.execute(
        update(ApiToken)
        .where(ApiToken.name == ADMIN_TOKEN_NAME, ApiToken.revoked_at.is_(None),
               *([ApiToken.token_hash != digest] if digest is not None else []))
        .values(revoked_at=utcnow()))
    if revoked := res.rowcount:  # type: ignore[attr-defined]
        log.info("revoked %d token(s) seeded from an earlier HADMC_ADMIN_TOKEN", revoked)
    if token is None:
        return
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None:
        create_user_token(session=session, user_name="admin", role="admin",
                          token_name=ADMIN_TOKEN_NAME, token=token)
    elif row.revoked_at is not None:
        log.warning("HADMC_ADMIN_TOKEN is a revoked token and does not authenticate; set a "
                    "new value")


def token_state(row: ApiToken, now: datetime | None = None) -> str:
    """``active``, ``expired`` or ``revoked``."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        return "expired"
    return "active"


def resolve(*, session: Session, token: str) -> Principal | None:
    digest = security.hash_token(token)
    if token.startswith(security.DEVICE_PREFIX):
        dev_id = session.scalar(select(Device.id).where(Device.credential_hash == digest,
                                                        Device.revoked_at.is_(None)))
        return Principal("device", dev_id) if dev_id is not None else None
    return resolve_user_digest(session=session, token_hash=digest)


def resolve_user_digest(*, session: Session, token_hash: str) -> Principal | None:
    """The user behind the live (not revoked, not expired) API token whose SHA-256 is
    ``token_hash`` (a dashboard session holds the digest, never the token)."""
    row = session.execute(
        select(ApiToken.user_id, ApiToken.role, User.name, ApiToken.id).join(User)
        .where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None),
               or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > utcnow()))).first()
    return Principal("user", *row) if row is not None else None
