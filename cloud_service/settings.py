"""Settings of the cloud service: the only place ``cloud_service`` reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Values that are never acceptable as a secret outside development.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "changethis", "secret", "admin",
                                 "password", "token", "dev", "test", "example"})
MIN_SECRET_LENGTH = 16


class Settings(BaseSettings):
    """Every knob of ``hadmc serve`` / ``hadmc worker``; environment prefix ``HADMC_``."""

    model_config = SettingsConfigDict(env_prefix="HADMC_", extra="ignore")

    environment: Literal["dev", "prod"] = "dev"
    #: SQLAlchemy URL; ``postgresql+psycopg://user@host/db`` when scaled.
    database_url: str = "sqlite:///./hadmc.db"
    #: Celery broker (``redis://host:6379/0``); None = jobs run in an in-process worker.
    broker_url: str | None = None
    #: Celery queue that compression jobs go to.
    queue: str = "hadmc"
    #: Content-addressed artifact store (models, datasets, versions).
    artifact_dir: Path = Path("./hadmc-artifacts")
    #: S3-compatible object store for artifacts (unset = the local directory alone). With a
    #: bucket, ``artifact_dir`` is a local cache and the bucket is the source of truth.
    s3_bucket: str | None = None
    #: e.g. ``http://minio:9000``; unset = AWS.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_prefix: str = ""
    #: Unset = boto3's own credential chain (instance role, ~/.aws, AWS_* variables).
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    #: Ed25519 manifest-signing key, created on first start with mode 0600.
    signing_key_file: Path = Path("./hadmc-signing.key")
    #: Seeds an API token for the user ``admin`` at start (stored hashed).
    admin_token: SecretStr | None = None
    #: Raw uploads (models, datasets, versions, probes) larger than this get 413.
    max_upload_mb: float = 512.0
    #: An uploaded ``.npz`` dataset may declare at most this many MiB of arrays once
    #: inflated (checked from its headers before anything is inflated).
    max_dataset_decompressed_mb: float = 512.0
    #: An uploaded dataset may hold at most this many samples.
    max_dataset_samples: int = 1_000_000
    #: An uploaded dataset archive (.zip of a COCO or YOLO folder) may hold at most this many
    #: entries, and inflate at most ``max_dataset_decompressed_mb`` in all.
    max_dataset_files: int = 100_000
    #: JSON request bodies larger than this get 413 (from Content-Length, before reading).
    max_json_body_kb: float = 1024.0
    #: A JSON body must arrive within this many seconds, and an upload must not pause for
    #: longer; otherwise 408 and the connection is closed.
    body_timeout_seconds: float = 30.0
    #: A connection without a request in progress (headers not complete yet, or idle
    #: after an answer) is closed after this many seconds.
    header_timeout_seconds: float = 10.0
    #: An idle keep-alive connection is closed after this many seconds.
    keep_alive_seconds: int = 5
    #: Connections per ``hadmc serve`` worker process; past it new requests get 503.
    max_connections: int = 1000
    #: Device registrations allowed per client address per minute.
    enroll_rate_per_minute: int = 30
    #: A job is tried at most this many times (a worker that dies counts as a try).
    job_max_attempts: int = 2
    #: A running job whose worker has not written a heartbeat for this long is orphaned.
    job_stale_seconds: float = 120.0
    #: Seconds between job heartbeats written by the worker.
    job_heartbeat_seconds: float = 10.0
    #: A queued job whose broker message is missing for this long is enqueued again.
    requeue_grace_seconds: float = 30.0
    #: Seconds between reconciler passes (0 = no reconciler thread in ``hadmc serve``).
    reconcile_interval_seconds: float = 30.0
    #: Seconds between rollout scheduler passes (0 = no scheduler thread in ``hadmc serve``).
    rollout_interval_seconds: float = 5.0
    #: Heartbeats are written in batches this often (0 = one UPDATE per heartbeat); see
    #: ``cloud_service/services/heartbeats.py`` for what that trades.
    heartbeat_flush_seconds: float = 1.0
    #: Run the in-process worker when no broker is configured.
    embedded_worker: bool = True
    #: A device not heard from for this long is offline (3 missed heartbeats of the
    #: agent's default 30 s); see ``cloud_service/services/fleet.py``.
    offline_after_seconds: float = 90.0
    #: When set, ``GET /metrics`` needs ``Authorization: Bearer <this>``; unset = open.
    metrics_token: SecretStr | None = None
    #: prometheus_client's multiprocess directory (the variable has no ``HADMC_`` prefix:
    #: the library reads it too). ``hadmc serve --workers N`` sets it to a fresh directory
    #: when unset, so that counters add up across its worker processes.
    prometheus_multiproc_dir: Path | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR",
                                                    "prometheus_multiproc_dir"))

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment == "dev":
            return self
        for name, secret, otherwise in (
                ("HADMC_ADMIN_TOKEN", self.admin_token,
                 "unset it and create tokens with `hadmc token create`"),
                ("HADMC_METRICS_TOKEN", self.metrics_token, "unset it to leave /metrics open")):
            token = secret.get_secret_value() if secret is not None else None
            if token is not None and (token.lower() in PLACEHOLDER_SECRETS
                                      or len(token) < MIN_SECRET_LENGTH):
                raise ValueError(
                    f"{name} is a placeholder or shorter than {MIN_SECRET_LENGTH} "
                    "characters; set a random value (e.g. `python -c 'import secrets; "
                    f"print(secrets.token_urlsafe(32))'`) or {otherwise}")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_dataset_decompressed_bytes(self) -> int:
        return int(self.max_dataset_decompressed_mb * 1024 * 1024)

    @property
    def max_json_body_bytes(self) -> int:
        return int(self.max_json_body_kb * 1024)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
