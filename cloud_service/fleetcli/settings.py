"""The fleet CLI's settings: where the server is and which API token to send."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SERVER = "http://127.0.0.1:8000"


class FleetCliSettings(BaseSettings):
    """``HADMC_SERVER`` and ``HADMC_TOKEN``; ``--server`` and ``--token`` take precedence."""

    model_config = SettingsConfigDict(env_prefix="HADMC_", extra="ignore")

    #: Base URL of the HAD-MC server; unset = ``http://127.0.0.1:8000`` for the fleet
    #: commands, and the local database for ``hadmc token``.
    server: str | None = None
    #: A user API token (``hadmc_u_...``), sent as ``Authorization: Bearer``.
    token: str | None = None
    #: Seconds to wait for the server to connect or answer.
    http_timeout_seconds: float = 15.0
