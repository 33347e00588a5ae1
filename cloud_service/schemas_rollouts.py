"""API schemas of the device protocol and rollouts (``docs/protocol.md``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud_service import schemas_examples as ex
from cloud_service.schemas import DbId, ModelLine, Public, Tag, Text

RolloutState = Literal["active", "paused", "completed", "aborted", "rolled_back"]
DeviceStatus = Literal["pending", "assigned", "succeeded", "failed", "cancelled", "rolled_back",
                       "skipped"]
Phase = Literal["manifest", "download", "verify", "smoke", "switch", "probation", "health",
                "rollback", "done"]


class Selector(BaseModel):
    """Exactly one of: ``{"all": true}``, ``{"device_ids": [...]}``, ``{"tags": [...]}``
    (devices with any of the tags). Revoked devices are never selected."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.SELECTOR))
    all: Literal[True] | None = None
    device_ids: list[DbId] | None = Field(default=None, min_length=1, max_length=100_000)
    tags: list[Tag] | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _one(self) -> Selector:
        given = [k for k in ("all", "device_ids", "tags") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `all: true`, `device_ids`, `tags`")
        return self


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.ROLLOUT_CREATE))
    version_id: DbId
    selector: Selector
    waves: list[float] = Field(default=[5, 25, 100], min_length=1, max_length=20,
                               description="Cumulative percentages, strictly increasing, "
                                           "ending at 100.")
    min_devices_per_wave: int = Field(default=1, ge=1, le=100_000)
    success_threshold: float = Field(default=0.95, ge=0, le=1)
    max_failure_rate: float = Field(default=0.2, ge=0, le=1)
    max_latency_regression: float = Field(default=0.25, ge=0, le=100)
    wave_timeout_seconds: int = Field(default=900, ge=1, le=30 * 86400,
                                      description="Include the agents' health window: a "
                                                  "device succeeds only once it commits.")
    rollback_on_abort: bool = Field(default=True, description="An automatic abort also "
                                    "sends the devices that moved back to the version "
                                    "they had (signed rollback orders).")
    replace_model: bool = Field(default=False, description="Allow the version to replace "
                                "the version of its model a device runs when their inputs "
                                "or outputs differ; otherwise such devices are skipped. "
                                "(A model the device does not run yet is added beside "
                                "its others.)")

    @model_validator(mode="after")
    def _waves(self) -> RolloutCreate:
        w = self.waves
        rising = all(b > a for a, b in zip(w, w[1:], strict=False))
        if not rising or w[0] <= 0 or w[-1] != 100:
            raise ValueError("waves must be strictly increasing percentages in (0, 100] "
                             "ending at 100, e.g. [5, 25, 100]")
        return self


class RolloutPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.ROLLOUT))
    id: int
    version_id: int
    selector: dict[str, Any]
    waves: list[float]
    min_devices_per_wave: int
    success_threshold: float
    max_failure_rate: float
    max_latency_regression: float
    wave_timeout_seconds: int
    rollback_on_abort: bool
    replace_model: bool
    state: RolloutState
    current_wave: int
    wave_started_at: datetime
    created_by: int | None
    created_by_name: str | None = Field(default=None,
                                        description="The user who created the rollout.")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    wave_counts: list[dict[str, int]] = Field(
        default_factory=list, description="Per wave: devices per status.")


class RolloutsPublic(BaseModel):
    data: list[RolloutPublic]
    count: int


class RolloutDevicePublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.ROLLOUT_DEVICE))
    device_id: int
    wave: int
    status: DeviceStatus
    from_version_id: int | None
    bytes_sent: int
    p50_ms: float | None
    p95_ms: float | None
    reason: str | None
    updated_at: datetime


class RolloutDevicesPublic(BaseModel):
    data: list[RolloutDevicePublic]
    count: int


class RolloutEventPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.ROLLOUT_EVENT,
                                                            ex.ROLLOUT_EVENT_BY_USER))
    id: int
    at: datetime
    kind: str
    reason: str
    details: dict[str, Any]
    by: str | None = Field(default=None, description="The user who asked for it (created, "
                                                     "pause, resume, abort, rollback); null "
                                                     "for the scheduler's decisions.")


class RolloutEventsPublic(BaseModel):
    data: list[RolloutEventPublic]
    count: int


class UpdateReportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.UPDATE_REPORT))
    version_id: DbId
    model: ModelLine | None = Field(default=None, description="The version's model line "
                                    "(`model-<id>`), checked; optional (the version names "
                                    "its model).")
    rollout_id: DbId | None = None
    ok: bool
    phase: Phase
    reason: Text | None = Field(default=None, max_length=4000)
    p50_ms: float | None = Field(default=None, ge=0, le=1e7)
    p95_ms: float | None = Field(default=None, ge=0, le=1e7)
    bytes_downloaded: int | None = Field(default=None, ge=0, le=2**62)


class UpdateReportPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.UPDATE_REPORT_PUBLIC))
    id: int
    device_id: int
    version_id: int | None
    rollout_id: int | None
    ok: bool
    phase: str
    reason: str | None
    created_at: datetime


class RollbackOrder(BaseModel):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.ROLLBACK_ORDER))
    order: dict[str, Any] = Field(description="kind, device_id, model, version, version_id, "
                                              "issued, expires")
    signature: str = Field(description="Hex Ed25519 over the canonical JSON of `order`.")


class DesiredModel(BaseModel):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.DESIRED_MODEL))
    model: str = Field(description="The model line (`model-<id>`), as the signed manifests "
                                   "and rollback orders name it.")
    model_id: int
    name: str | None = Field(default=None, description="The model's name.")
    version_id: int | None = Field(description="null: keep what you run of this model.")
    number: int | None
    onnx_hash: str | None
    onnx_size: int | None
    rollout_id: int | None
    rollback_order: RollbackOrder | None
    hold: bool = Field(default=False, description="Stay on the version you run of this "
                                                  "model (its rollout is paused).")
    runtimes: list[str] | None = Field(default=None, description="The runtimes the version "
                                       "may run on, the one it was built with first; the "
                                       "agent runs it with the first it has.")


class DesiredPublic(BaseModel):
    """The top-level fields are the device's primary model (what an agent that runs one
    model reads); ``models`` has one entry per model a rollout names for the device."""

    model_config = ConfigDict(json_schema_extra=ex.examples(ex.DESIRED))
    version_id: int | None
    model_id: int | None
    number: int | None
    onnx_hash: str | None
    onnx_size: int | None
    rollout_id: int | None
    rollback_order: RollbackOrder | None
    hold: bool = Field(default=False, description="Stay on the version you run (the "
                                                  "rollout is paused); do not update.")
    runtimes: list[str] | None = Field(default=None, description="The runtimes the version "
                                       "may run on, the one it was built with first.")
    models: list[DesiredModel] = Field(default_factory=list, description="Per model.")
