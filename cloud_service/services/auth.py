"""Users, API tokens and the principal behind a bearer token."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_service import security
from cloud_service.models import ApiToken, Device, User


@dataclass(frozen=True)
class Principal:
    kind: str  # "user" | "device"
    id: int


def create_user_token(*, session: Session, user_name: str, token_name: str = "",
                      token: str | None = None) -> str:
    """Create (or reuse) a user and give it a new token; returns the plaintext token."""
    user = session.scalar(select(User).where(User.name == user_name))
    if user is None:
        user = User(name=user_name)
        session.add(user)
        session.flush()
    token = token or security.new_token(security.USER_PREFIX)
    session.add(ApiToken(user_id=user.id, name=token_name, token_hash=security.hash_token(token)))
    session.flush()
    return token


def seed_admin_token(*, session: Session, token: str) -> None:
    """Make ``token`` a valid token of the user ``admin`` (idempotent)."""
    digest = security.hash_token(token)
    if session.scalar(select(ApiToken.id).where(ApiToken.token_hash == digest)) is None:
        create_user_token(session=session, user_name="admin", token_name="HADMC_ADMIN_TOKEN",
                          token=token)


def resolve(*, session: Session, token: str) -> Principal | None:
    digest = security.hash_token(token)
    if token.startswith(security.DEVICE_PREFIX):
        dev_id = session.scalar(select(Device.id).where(Device.credential_hash == digest,
                                                        Device.revoked_at.is_(None)))
        return Principal("device", dev_id) if dev_id is not None else None
    user_id = session.scalar(select(ApiToken.user_id).where(ApiToken.token_hash == digest,
                                                            ApiToken.revoked_at.is_(None)))
    return Principal("user", user_id) if user_id is not None else None
