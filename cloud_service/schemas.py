"""API schemas: ``XCreate`` / ``XPublic`` / ``XsPublic`` (a page plus the total count)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    computed_field,
    model_validator,
)

from cloud_service import schemas_examples as ex
from cloud_service.services.auth import DEFAULT_ROLE, Role

T = TypeVar("T")
MAX_ID = 2_147_483_647  # ids are 32-bit integers in the database
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _refuse(control: re.Pattern[str]) -> Callable[[str], str]:
    def check(value: str) -> str:
        found = control.search(value)
        if found:
            raise ValueError(f"must not contain control characters (found "
                             f"{found.group()!r} at position {found.start()})")
        return value

    return check


#: A name or label that is stored (of a model, dataset, device, token, profile, ...): no
#: control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F). PostgreSQL
#: cannot store NUL, and the others garble logs, terminals and pages.
Name = Annotated[str, AfterValidator(_refuse(re.compile(r"[\x00-\x1f\x7f-\x9f]")))]
#: Stored free text (a reason, a message): as ``Name`` but tab and line breaks are kept.
Text = Annotated[str, AfterValidator(_refuse(
    re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")))]


class Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int = Field(description="Total number of rows matching the filters.")


class ModelPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.MODEL))
    id: int
    name: str
    format: Literal["safetensors", "onnx"]
    arch: dict[str, Any] | None = Field(description="ArchSpec of safetensors models.")
    artifact_hash: str = Field(description="BLAKE3 of the uploaded file.")
    size_bytes: int
    details: dict[str, Any]
    created_at: datetime
    owner_name: str | None = Field(default=None, description="The user who uploaded it.")


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.DATASET_CREATE))
    builtin: Literal["fashion-mnist", "digits", "fashion-mnist-scenes"] = Field(
        description="A built-in dataset (`fashion-mnist-scenes`: object detection).")
    name: Name | None = Field(default=None, max_length=200)


class DatasetPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.DATASET))
    id: int
    name: str
    builtin: str | None
    artifact_hash: str | None
    size_bytes: int
    details: dict[str, Any]
    created_at: datetime
    owner_name: str | None = Field(default=None, description="The user who added it.")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.JOB_CREATE))
    model_id: DbId = Field(description="A safetensors model uploaded to /v1/models.")
    dataset_id: DbId = Field(description="A dataset from /v1/datasets.")
    profile: Name | None = Field(default=None, max_length=100,
                                 description="Target hardware profile name (GET "
                                             "/v1/profiles); or give `target`.")
    target: JobTarget | None = Field(default=None, description="What to compress for: "
                                     "`{\"profile\": NAME}`, `{\"device\": ID}` or "
                                     "`{\"devices\": {\"tags\": [...]}}` (docs/service.md).")
    task: Literal["classify", "detect"] | None = Field(
        default=None, description="What the model does; default: the dataset's task (`detect` "
                                  "for COCO, YOLO and fashion-mnist-scenes datasets).")
    constraints: dict[str, Any] = Field(
        default_factory=dict,
        description="max_accuracy_drop (points of top-1; classify), max_map_drop (points of "
                    "mAP@0.5; detect), latency_budget_ms, size_budget_mb, time_budget_s "
                    "(wall seconds the compression may take).")
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-technique overrides (prune, distill, fuse, quantize, measure, ...), "
                    "as read by hadmc_core.config.PipelineConfig.from_dict; e.g. "
                    "{\"prune\": {\"search\": \"evolution\"}} picks the search strategy "
                    "(greedy, evolution, rl).")
    update_of: DbId | None = Field(
        default=None, description="A compressed version the devices run: keep its plan (kept "
        "channels, INT8 layers, quantization parameters where accuracy allows) so their "
        "delta stays small; the new version continues that version's model line. 404 when "
        "it does not exist, 409 when it is of another architecture or model line.")
    allow_restructure: bool = Field(
        default=False, description="With update_of: choose channels and precisions afresh "
        "when that plan cannot meet the constraints (otherwise the job says so).")


class JobPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.JOB))
    id: int
    model_id: int
    dataset_id: int
    profile: str
    target: dict[str, Any] | None = Field(default=None, description="The target as "
                                          "resolved at submission: `profile`, or `device_ids` "
                                          "(and the `tags` that selected them).")
    task: str = Field(default="classify", description="`classify` or `detect`.")
    config: dict[str, Any]
    state: JobState
    stage: str | None
    done: int
    total: int
    timings: dict[str, Any] = Field(description="Seconds spent per stage so far.")
    log_tail: str
    error: str | None
    attempts: int
    cancel_requested: bool
    version_id: int | None
    update_of_id: int | None = Field(default=None, description="The version whose plan the "
                                     "job keeps (update_of), or null.")
    allow_restructure: bool = False
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    owner_name: str | None = Field(default=None, description="The user who submitted it.")

    @computed_field(description="Progress of the current stage, 0-100 (null if unknown).")  # type: ignore[prop-decorator]
    @property
    def percent(self) -> float | None:
        return round(100.0 * self.done / self.total, 1) if self.total else None


class DeviceLatency(BaseModel):
    device_id: int
    p50_ms: float
    p95_ms: float | None


class VersionLatency(BaseModel):
    """Predicted against measured latency (``cloud_service.services.updates``)."""

    predicted_ms: float | None = Field(description="The report's latency of the compressed "
                                       "model on its target (batch 1).")
    predicted_source: str | None = Field(description="Where it comes from: `measured` (on "
                                         "the worker, a machine of the target's class), "
                                         "`device_table` or `estimated` (docs/report.md).")
    predicted_model: str | None = Field(
        default=None, description="The latency model behind it (the report's "
        "`latency_model`): `device-table+whole-model-term` (the device's table through the "
        "whole-model term it measured), `device-table` (the sum of its layers), either "
        "ending in `+p50-correction` when scaled by the p50s the device reported for "
        "versions built for it, `measured-<backend>-in-graph`, `roofline`, ...")
    measured_p50_ms: float | None = Field(description="Median over devices of each "
                                          "device's p50 for this version.")
    measured_p95_ms: float | None = Field(description="Median over devices of their p95.")
    devices: int = Field(description="Devices that reported a measurement.")
    error_pct: float | None = Field(description="(predicted - measured p50) / measured p50, "
                                    "in percent.")
    per_device: list[DeviceLatency]


class VersionPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.VERSION))
    id: int
    model_id: int
    number: int
    job_id: int | None
    profile: str
    onnx_hash: str
    onnx_size: int
    summary: dict[str, Any]
    constraints_met: bool
    created_at: datetime
    task: str = Field(default="classify", description="`classify` or `detect`.")
    built_for: dict[str, Any] | None = Field(
        default=None, description="What it was built for: isa, accelerator, flags, runtime, "
        "runtimes, runtime_version {min, below}, memory_mb (docs/protocol.md); null: its "
        "profile's.")
    #: ``GET /v1/versions/{id}`` only (lists leave it out: it reads the report)
    latency: VersionLatency | None = None


class EnrollmentTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.TOKEN_CREATE))
    name: Name = Field(default="", max_length=100)
    expires_in_seconds: int = Field(default=86400, gt=0, le=365 * 86400)
    max_uses: int = Field(default=1, gt=0, le=1_000_000)


class EnrollmentTokenPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.TOKEN))
    id: int
    name: str
    max_uses: int
    uses: int
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime


class EnrollmentTokenCreated(EnrollmentTokenPublic):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.TOKEN_CREATED))
    token: str = Field(description="Shown once; give it to the devices to enroll.")


class ApiTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra=ex.examples(ex.API_TOKEN_CREATE))
    name: Name = Field(default="", max_length=100)
    expires_in_days: int | None = Field(default=None, gt=0, le=3650,
                                        description="Days until it stops working; null = "
                                                    "never expires.")
    role: Role = Field(default=DEFAULT_ROLE,
                       description="viewer: read; operator: also create and change models, "
                                   "datasets, jobs, versions, devices, rollouts; admin: also "
                                   "API tokens.")


class ApiTokenPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.API_TOKEN))
    id: int
    name: str
    role: Role
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiTokenCreated(ApiTokenPublic):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.API_TOKEN_CREATED))
    token: str = Field(description="Shown once; send it as `Authorization: Bearer <token>`.")


class DeviceRegister(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.DEVICE_REGISTER))
    enrollment_token: str = Field(max_length=200)
    name: Name = Field(min_length=1, max_length=200)
    profile: dict[str, Any] | None = Field(default=None, description="A hardware profile.")


class DeviceRegistered(BaseModel):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.DEVICE_REGISTERED))
    device_id: int
    credential: str = Field(description="Bearer credential for this device's endpoints.")
    manifest_public_key: str = Field(description="PEM of the server's Ed25519 public key.")


#: A model line as agents and signed manifests name it: ``model-<model id>``.
ModelLine = Annotated[str, Field(pattern=r"^model-[1-9][0-9]{0,9}$", max_length=20)]


class ModelBeat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelLine | None = Field(default=None, description="The model line "
                                    "(`model-<id>`); checked against the version's.")
    version_id: DbId | None = Field(default=None, description="The version of that model "
                                    "the device runs (null: none yet).")


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.HEARTBEAT,
                                                                            ex.HEARTBEAT_OLD))
    current_version_id: DbId | None = Field(default=None, description="The version of the "
                                            "device's primary (or only) model.")
    status: Name | None = Field(default=None, max_length=100)
    models: list[ModelBeat] | None = Field(
        default=None, max_length=100, description="Each model the device runs; agents that "
        "run one model send `current_version_id` only.")

    def claims(self) -> dict[int, str | None]:
        """``{version id: model line or None}`` of every version the beat names."""
        out: dict[int, str | None] = {}
        if self.current_version_id is not None:
            out[self.current_version_id] = None
        for m in self.models or []:
            if m.version_id is not None:
                out[m.version_id] = m.model or out.get(m.version_id)
        return out


class HeartbeatAck(BaseModel):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.HEARTBEAT_ACK))
    device_id: int
    last_seen_at: datetime


class LatencyReportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.LATENCY))
    version_id: DbId | None = None
    p50_ms: float | None = Field(default=None, ge=0)
    p99_ms: float | None = Field(default=None, ge=0)
    operators: dict[str, list[float]] = Field(
        default_factory=dict, description="Measured per-operator latency table (ms).")


class DeploymentPublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.DEPLOYMENT))
    model_id: int
    model: str = Field(description="The model line agents name it by (`model-<id>`).")
    current_version_id: int | None
    previous_version_id: int | None
    phase: str | None = Field(description="Phase of the last update report for this model.")
    updated_at: datetime


class DevicePublic(Public):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.DEVICE))
    id: int
    name: str
    profile: dict[str, Any] | None
    latency: dict[str, Any] | None
    status: str | None
    current_version_id: int | None = Field(description="The version of its primary model "
                                                       "(the first it ran).")
    previous_version_id: int | None
    models: list[DeploymentPublic] = Field(
        default_factory=list, validation_alias="deployments",
        description="Each model the device runs, primary first.")
    multi_model: bool = Field(default=False, description="Its agent keeps several models "
                                                         "apart (it reports per model).")
    tags: list[str]
    bytes_downloaded: int = Field(description="Bytes the server sent it (ONNX and deltas).")
    last_seen_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None = Field(
        default=None, description="Set by DELETE /v1/devices/{id}; its credential no longer "
                                  "works.")
    revoked_by_name: str | None = Field(default=None, description="The user who revoked it.")
    tags_updated_by_name: str | None = Field(default=None,
                                             description="The user who last set the tags.")
    tags_updated_at: datetime | None = Field(default=None,
                                             description="When a user last set the tags.")


Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class DeviceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=ex.examples(ex.DEVICE_UPDATE))
    tags: list[Tag] = Field(max_length=100, description="Replaces the device's tags.")


class ProfilesPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.PROFILES))
    data: list[str] = Field(description="Built-in hardware profile names.")


class Problem(BaseModel):
    model_config = ConfigDict(json_schema_extra=ex.examples(ex.PROBLEM))
    type: str = "about:blank"
    title: str
    status: int
    detail: str


class TagSelector(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tags: list[Tag] = Field(min_length=1, max_length=100,
                            description="Devices with any of these tags.")


class JobTarget(BaseModel):
    """Exactly one of ``profile``, ``device``, ``devices``."""

    model_config = ConfigDict(extra="forbid")
    profile: Name | None = Field(default=None, max_length=100,
                                 description="A built-in profile (GET /v1/profiles).")
    device: DbId | None = Field(default=None, description="An enrolled device: its measured "
                                "operator latency table and its runtime.")
    devices: TagSelector | None = Field(default=None, description="Enrolled devices by tag: "
                                        "their tables combined (the slowest per operator).")

    @model_validator(mode="after")
    def _one(self) -> JobTarget:
        given = [k for k in ("profile", "device", "devices") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `profile`, `device`, `devices`")
        return self


JobCreate.model_rebuild()
