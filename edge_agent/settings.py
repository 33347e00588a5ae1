"""Settings of ``hadmc-agent``: the only place the agent reads the environment."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AgentSettings(BaseSettings):
    """Every knob of the agent; environment prefix ``HADMC_AGENT_``; CLI flags win."""

    model_config = SettingsConfigDict(env_prefix="HADMC_AGENT_", extra="ignore")

    #: Base URL of the HAD-MC server, e.g. ``http://127.0.0.1:8000``.
    server_url: str = ""
    #: One-time enrollment token; only needed until the device has enrolled.
    enrollment_token: str = ""
    #: Device name shown by the server (default: the host name).
    name: str = Field(default_factory=socket.gethostname)
    #: Credentials, pinned key, state and model versions (see docs/agent.md).
    data_dir: Path = Path("/var/lib/hadmc")
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    #: Seconds between conditional GETs of the desired version.
    poll_seconds: float = Field(default=15.0, gt=0)
    #: Seconds between attempts to send queued update reports.
    report_seconds: float = Field(default=5.0, gt=0)
    #: A version that failed is not tried again before this (unless the desired changes).
    retry_failed_seconds: float = Field(default=600.0, ge=0)
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Per read/write on an HTTP connection (not the whole transfer).
    io_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Most attempts for one download before the update fails (each resumes with Range).
    download_attempts: int = Field(default=5, ge=1)
    backoff_base_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    #: Cap on a version's probe file.
    max_probe_mb: float = Field(default=64.0, gt=0)
    #: Timed runs (batch 1) of the smoke test for p50 / p95.
    smoke_runs: int = Field(default=30, ge=3)
    #: Seconds a new version stays on probation after the switch before it is committed
    #: and reported as a success (0 = commit right after the smoke test).
    health_window_seconds: float = Field(default=300.0, ge=0)
    #: Seconds between health checks during the window (probe outputs, latency, errors).
    health_check_seconds: float = Field(default=15.0, gt=0)
    #: Most served inference requests that may fail on the new version (fraction).
    health_max_error_rate: float = Field(default=0.05, ge=0, le=1)
    #: Most p50 latency of the new version against the version before it, timed on this
    #: device (ratio; 0 = not checked).
    health_max_latency_ratio: float = Field(default=2.0, ge=0)
    #: Measure and report the per-operator latency table at start.
    latency_table: bool = True
    #: ORT intra-op threads for inference and timing (0 = ONNX Runtime's default).
    threads: int = Field(default=0, ge=0)
    #: Loopback port of the inference endpoint (0 = do not serve).
    serve_port: int = Field(default=8765, ge=0, le=65535)
    log_level: str = "INFO"

    @field_validator("server_url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v
