"""ORM models. Rows hold metadata and content hashes; blobs live in the artifact store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cloud_service.db import Base, UTCDateTime, utcnow

HASH = String(64)


def _name(user: User | None) -> str | None:
    return user.name if user is not None else None


class User(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    #: viewer | operator | admin (``services.auth.ROLES``). Rows written without one (before
    #: roles existed, or by an older server) are admin: such tokens had every right.
    role: Mapped[str] = mapped_column(String(20), server_default="admin")
    token_hash: Mapped[str] = mapped_column(HASH, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: None = never expires.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Model(Base):
    """A base model uploaded by a user: safetensors + architecture, or ONNX."""

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(20))  # safetensors | onnx
    arch: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    artifact_hash: Mapped[str] = mapped_column(HASH)
    size_bytes: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    owner: Mapped[User | None] = relationship(viewonly=True)

    @property
    def owner_name(self) -> str | None:
        return _name(self.owner)


class Dataset(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    builtin: Mapped[str | None] = mapped_column(String(50))
    artifact_hash: Mapped[str | None] = mapped_column(HASH)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    owner: Mapped[User | None] = relationship(viewonly=True)

    @property
    def owner_name(self) -> str | None:
        return _name(self.owner)


class Job(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    profile: Mapped[str] = mapped_column(String(100))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), index=True, default="queued")
    stage: Mapped[str | None] = mapped_column(String(50))
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    log_tail: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    task_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(200))
    # Plain column (model_versions.job_id holds the foreign key; no cycle between tables).
    version_id: Mapped[int | None] = mapped_column(Integer)
    #: The target as submitted and resolved (``services.jobs``): ``{"profile": NAME}``, or
    #: the device ids a device or tag target named at submission. None on jobs from before.
    target: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: What the model does: ``classify`` or ``detect`` (``services.jobs``).
    task: Mapped[str] = mapped_column(String(20), server_default="classify", default="classify")
    #: The version whose plan the job keeps (``hadmc_core.update``); None: chosen afresh.
    #: A plain column, as ``version_id`` (versions refer to jobs already).
    update_of_id: Mapped[int | None] = mapped_column(Integer)
    #: With ``update_of_id``: choose afresh when that plan cannot meet the constraints.
    allow_restructure: Mapped[bool] = mapped_column(Boolean, server_default=false(),
                                                    default=False)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    owner: Mapped[User | None] = relationship(viewonly=True)

    @property
    def owner_name(self) -> str | None:
        return _name(self.owner)


class ModelVersion(Base):
    """An immutable, numbered result of a job: ONNX + report in the artifact store."""

    __table_args__ = (UniqueConstraint("model_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    profile: Mapped[str] = mapped_column(String(100))
    onnx_hash: Mapped[str] = mapped_column(HASH)
    onnx_size: Mapped[int] = mapped_column(Integer)
    report_hash: Mapped[str] = mapped_column(HASH)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    constraints_met: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Signed manifest and probe (.npz) in the artifact store; None until computed.
    manifest_hash: Mapped[str | None] = mapped_column(HASH)
    probe_hash: Mapped[str | None] = mapped_column(HASH)
    #: Inputs and outputs of the graph (name, element type, shape), read from the ONNX file
    #: once (``services.compat``); None until first needed.
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: What it was built for: hardware class, runtime and its version range, memory needed
    #: (``services.compat.built_for``); None: matched by ``profile`` alone.
    built_for: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def task(self) -> str:
        """``classify`` or ``detect``: its job's task, or a published file's metadata."""
        return str((self.summary or {}).get("task") or "classify")


class EnrollmentToken(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(HASH, unique=True)
    max_uses: Mapped[int] = mapped_column(Integer, default=1)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Device(Base):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    credential_hash: Mapped[str] = mapped_column(HASH, unique=True)
    enrollment_token_id: Mapped[int | None] = mapped_column(
        ForeignKey("enrollment_tokens.id", ondelete="SET NULL"))
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    latency: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str | None] = mapped_column(String(100))
    #: The agent keeps several models apart (it sent a heartbeat with per-model versions);
    #: False for agents that run one model only.
    multi_model: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Bytes the server sent this device (model.onnx and delta downloads).
    bytes_downloaded: Mapped[int] = mapped_column(BigInteger, default=0)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    #: The user who last set the tags, and when (None: never set by a user).
    tags_updated_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    tags_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoker: Mapped[User | None] = relationship(viewonly=True, foreign_keys=[revoked_by])
    tags_updater: Mapped[User | None] = relationship(viewonly=True,
                                                     foreign_keys=[tags_updated_by])
    #: One per model the device runs, oldest first: the first is its primary model.
    deployments: Mapped[list[Deployment]] = relationship(
        viewonly=True, order_by="Deployment.id", lazy="selectin")

    @property
    def primary(self) -> Deployment | None:
        """The deployment of the device's first model (what a single-model agent runs)."""
        return self.deployments[0] if self.deployments else None

    @property
    def current_version_id(self) -> int | None:
        """The version of the primary model the device runs."""
        return self.primary.current_version_id if self.primary else None

    @property
    def previous_version_id(self) -> int | None:
        return self.primary.previous_version_id if self.primary else None

    @property
    def revoked_by_name(self) -> str | None:
        return _name(self.revoker)

    @property
    def tags_updated_by_name(self) -> str | None:
        return _name(self.tags_updater)


class Deployment(Base):
    """One model on one device: the version it runs and the one it ran before (what a
    rollback of this model goes back to), and the phase of its last update report."""

    __table_args__ = (UniqueConstraint("device_id", "model_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"),
                                          index=True)
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    previous_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    #: The phase of the last update report for this model (probation, done, health, ...).
    phase: Mapped[str | None] = mapped_column(String(20))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def model(self) -> str:
        """The model line the agent and the signed manifests name (``model-<id>``)."""
        return f"model-{self.model_id}"


class LatencyReport(Base):
    """A latency measurement a device reported (per version, optionally per operator)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    operators: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delta(Base):
    """A cached delta container from one version to another (signed with the target's
    stored manifest ``manifest_hash``)."""

    __table_args__ = (UniqueConstraint("base_version_id", "target_version_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    base_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"))
    target_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    artifact_hash: Mapped[str] = mapped_column(HASH)
    manifest_hash: Mapped[str] = mapped_column(HASH)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Rollout(Base):
    """A version sent to selected devices in cumulative waves, watched by the scheduler."""

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON)
    waves: Mapped[list[float]] = mapped_column(JSON)
    min_devices_per_wave: Mapped[int] = mapped_column(Integer, default=1)
    success_threshold: Mapped[float] = mapped_column(Float)
    max_failure_rate: Mapped[float] = mapped_column(Float)
    max_latency_regression: Mapped[float] = mapped_column(Float)
    wave_timeout_seconds: Mapped[int] = mapped_column(Integer)
    #: An automatic abort (failures, latency regression, timeout) also sends the devices
    #: that moved back to the version they had.
    rollback_on_abort: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Allow a version with another input/output signature to replace the version of the
    #: same model a device runs (a version of another model is a deployment of its own).
    replace_model: Mapped[bool] = mapped_column(Boolean, default=False)
    # active | paused | completed | aborted | rolled_back
    state: Mapped[str] = mapped_column(String(20), index=True, default="active")
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    creator: Mapped[User | None] = relationship(viewonly=True)

    @property
    def created_by_name(self) -> str | None:
        return _name(self.creator)


class RolloutDevice(Base):
    """One device's place in a rollout: pending -> assigned -> succeeded | failed |
    cancelled -> rolled_back; skipped when the version does not fit the device (or the
    device was revoked) and it is never assigned."""

    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    wave: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    from_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RolloutEvent(Base):
    """A scheduler or user decision about a rollout, with its reason."""

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"),
                                            index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(30))
    reason: Mapped[str] = mapped_column(Text, default="")
    #: A user's action has ``user_id`` and ``user_name`` here; the scheduler's has neither.
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    @property
    def by(self) -> str | None:
        """The name of the user who asked for this (None: the scheduler decided)."""
        return (self.details or {}).get("user_name")


class UpdateReport(Base):
    """What a device said after an update or rollback attempt."""

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"),
                                           index=True)
    version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    rollout_id: Mapped[int | None] = mapped_column(
        ForeignKey("rollouts.id", ondelete="SET NULL"))
    ok: Mapped[bool] = mapped_column(Boolean)
    phase: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    bytes_downloaded: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
