"""Enrollment tokens and devices."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from cloud_service import security
from cloud_service.db import utcnow
from cloud_service.errors import AuthenticationError, ConflictError, InvalidInputError
from cloud_service.models import (
    Device,
    EnrollmentToken,
    LatencyReport,
    ModelVersion,
    Rollout,
    RolloutDevice,
)
from cloud_service.services import deployments
from cloud_service.services.heartbeats import device_statement

R = TypeVar("R", Device, EnrollmentToken)


def create_enrollment_token(*, session: Session, name: str, expires_in_seconds: int,
                            max_uses: int, created_by: int | None
                            ) -> tuple[EnrollmentToken, str]:
    token = security.new_token(security.ENROLL_PREFIX)
    row = EnrollmentToken(name=name, token_hash=security.hash_token(token), max_uses=max_uses,
                          uses=0, expires_at=utcnow() + timedelta(seconds=expires_in_seconds),
                          created_by=created_by)
    session.add(row)
    session.flush()
    return row, token


def list_enrollment_tokens(*, session: Session, offset: int, limit: int
                           ) -> tuple[list[EnrollmentToken], int]:
    rows = session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.id.desc())
                           .offset(offset).limit(limit))
    return list(rows), session.scalar(select(func.count(EnrollmentToken.id))) or 0


def _revoke(session: Session, row: R | None, what: str) -> R | None:
    """Set ``revoked_at`` once (409 the second time); None for a missing row."""
    if row is None:
        return None
    if row.revoked_at is not None:
        raise ConflictError(f"{what} is already revoked")
    row.revoked_at = utcnow()
    session.flush()
    return row


def revoke_enrollment_token(*, session: Session, token_id: int) -> EnrollmentToken | None:
    return _revoke(session, session.get(EnrollmentToken, token_id),
                   f"enrollment token {token_id}")


def parse_profile_dict(profile: dict[str, Any]) -> dict[str, Any]:
    from hadmc_core.errors import HadmcError
    from hadmc_core.hal import parse_profile

    try:
        return parse_profile(profile, "device profile").model_dump(mode="json")
    except HadmcError as e:
        raise InvalidInputError(str(e)) from e


def register_device(*, session: Session, enrollment_token: str, name: str,
                    profile: dict[str, Any] | None) -> tuple[Device, str]:
    """Spend one use of an enrollment token (atomically) and create the device."""
    digest = security.hash_token(enrollment_token)
    now = utcnow()
    spent = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.token_hash == digest, EnrollmentToken.revoked_at.is_(None),
               EnrollmentToken.expires_at > now, EnrollmentToken.uses < EnrollmentToken.max_uses)
        .values(uses=EnrollmentToken.uses + 1)
        .returning(EnrollmentToken.id))
    token_id = spent.scalar()
    if token_id is None:
        raise AuthenticationError("the enrollment token is unknown, expired, revoked or used "
                                  "up; ask an operator for a new one")
    credential = security.new_token(security.DEVICE_PREFIX)
    dev = Device(name=name, credential_hash=security.hash_token(credential),
                 enrollment_token_id=token_id,
                 profile=parse_profile_dict(profile) if profile else None)
    session.add(dev)
    session.flush()
    return dev, credential


def get_device(*, session: Session, device_id: int) -> Device | None:
    return session.get(Device, device_id)


def list_devices(*, session: Session, offset: int, limit: int) -> tuple[list[Device], int]:
    rows = session.scalars(select(Device).order_by(Device.id).offset(offset).limit(limit))
    return list(rows), session.scalar(select(func.count(Device.id))) or 0


def _check_version(session: Session, version_id: int | None) -> None:
    if version_id is not None and session.get(ModelVersion, version_id) is None:
        raise InvalidInputError(f"model version {version_id} does not exist")


def heartbeat(*, session: Session, device_id: int, credential: str,
              claims: dict[int, str | None], status: str | None, multi: bool = False
              ) -> datetime | None:
    """Authenticate and record a heartbeat: liveness and status in one UPDATE (the hottest
    path: every device, every 30 s), then the versions it runs (``{version id: model line
    or None}``) in its deployments. Returns the time, or None when no live device has this
    id and credential (the caller then finds out why)."""
    deployments.check_claims(session, claims)
    now = utcnow()
    row: dict[str, Any] = {"b_id": device_id, "last_seen_at": now, "b_multi": multi}
    if status is not None:
        row["status"] = status
    res = session.execute(device_statement(status is not None).where(
        Device.credential_hash == security.hash_token(credential)), row)
    if not res.rowcount:  # type: ignore[attr-defined]
        return None
    deployments.confirm_versions(session, [{"b_id": device_id, "b_vid": vid, "b_at": now}
                                           for vid in claims])
    return now


def set_profile(*, session: Session, device_id: int, profile: dict[str, Any]) -> Device | None:
    dev = session.get(Device, device_id)
    if dev is None:
        return None
    dev.profile = parse_profile_dict(profile)
    dev.last_seen_at = utcnow()
    session.flush()
    return dev


def report_latency(*, session: Session, device_id: int, version_id: int | None,
                   p50_ms: float | None, p99_ms: float | None,
                   operators: dict[str, list[float]]) -> Device | None:
    """Record a latency report. A report without an operator table (a version's p50
    after an update) keeps the table the device sent before: jobs that target the device
    read it (``cloud_service.tasks.targets``)."""
    dev = session.get(Device, device_id)
    if dev is None:
        return None
    _check_version(session, version_id)
    session.add(LatencyReport(device_id=device_id, version_id=version_id, p50_ms=p50_ms,
                              p99_ms=p99_ms, operators=operators))
    kept = operators or (dev.latency or {}).get("operators") or {}
    dev.latency = {"version_id": version_id, "p50_ms": p50_ms, "p99_ms": p99_ms,
                   "operators": kept, "at": utcnow().isoformat()}
    dev.last_seen_at = utcnow()
    session.flush()
    return dev


def record_download(*, session: Session, device_id: int, version_id: int, nbytes: int) -> None:
    """Add bytes sent to a device to its total and to its row in the latest rollout that
    assigned it ``version_id`` (two indexed UPDATEs)."""
    session.execute(update(Device).where(Device.id == device_id)
                    .values(bytes_downloaded=Device.bytes_downloaded + nbytes))
    latest = (select(func.max(RolloutDevice.rollout_id)).join(Rollout)
              .where(RolloutDevice.device_id == device_id, Rollout.version_id == version_id,
                     RolloutDevice.status != "pending").scalar_subquery())
    session.execute(update(RolloutDevice)
                    .where(RolloutDevice.device_id == device_id,
                           RolloutDevice.rollout_id == latest)
                    .values(bytes_sent=RolloutDevice.bytes_sent + nbytes))


def set_tags(*, session: Session, device_id: int, tags: list[str], by: int | None = None
             ) -> Device | None:
    """Replace the device's tags; ``by`` is the user who did (recorded with the time)."""
    dev = session.get(Device, device_id)
    if dev is None:
        return None
    dev.tags = sorted(set(tags))
    dev.tags_updated_by, dev.tags_updated_at = by, utcnow()
    session.flush()
    return dev


def revoke_device(*, session: Session, device_id: int, by: int | None = None
                  ) -> Device | None:
    """Revoke a device (``by`` the user who did): its credential stops working, rollouts no
    longer select it, and the open rollouts it has not finished skip it (it leaves its
    wave's denominator)."""
    dev = _revoke(session, session.get(Device, device_id), f"device {device_id}")
    if dev is not None:
        dev.revoked_by = by
        open_rollouts = select(Rollout.id).where(Rollout.state.in_(("active", "paused")))
        session.execute(update(RolloutDevice)
                        .where(RolloutDevice.device_id == device_id,
                               RolloutDevice.status.in_(("pending", "assigned")),
                               RolloutDevice.rollout_id.in_(open_rollouts))
                        .values(status="skipped", reason="device revoked", updated_at=utcnow())
                        .execution_options(synchronize_session=False))
    return dev
