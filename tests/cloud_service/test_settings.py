from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloud_service.settings import Settings


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HADMC_DATABASE_URL", "HADMC_BROKER_URL", "HADMC_ENVIRONMENT"):
        monkeypatch.delenv(key, raising=False)
    s = Settings()
    assert s.database_url == "sqlite:///./hadmc.db"
    assert s.broker_url is None
    assert s.environment == "dev"


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HADMC_BROKER_URL", "redis://example:6379/1")
    monkeypatch.setenv("HADMC_MAX_UPLOAD_MB", "2")
    s = Settings()
    assert s.broker_url == "redis://example:6379/1"
    assert s.max_upload_bytes == 2 * 1024 * 1024


@pytest.mark.parametrize("token", ["changeme", "admin", "short-token"],
                         ids=["changeme", "admin", "too-short"])
def test_placeholder_secret_refused_in_prod(token: str) -> None:
    with pytest.raises(ValidationError, match="HADMC_ADMIN_TOKEN"):
        Settings(environment="prod", admin_token=token)


def test_placeholder_secret_allowed_in_dev_and_real_secret_in_prod() -> None:
    assert Settings(environment="dev", admin_token="changeme").admin_token is not None
    s = Settings(environment="prod", admin_token="x" * 40)
    assert s.admin_token is not None and s.admin_token.get_secret_value() == "x" * 40
