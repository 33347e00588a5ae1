from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from cloud_service import migrate
from cloud_service.app import create_app
from cloud_service.db import make_engine
from cloud_service.errors import SchemaOutdatedError
from cloud_service.models import Base
from tests.cloud_service.conftest import create_database, drop_database, make_settings


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_to_head_and_back_on_postgres(redis_url: str) -> None:
    url = create_database()
    try:
        assert _tables(url) == set()
        migrate.upgrade(url)
        assert _tables(url) == set(Base.metadata.tables)
        migrate.check_schema(url)
        migrate.downgrade(url, "base")
        assert _tables(url) == set()
        with pytest.raises(SchemaOutdatedError, match="hadmc db upgrade"):
            migrate.check_schema(url)
    finally:
        drop_database(url)


def test_migrations_match_models_on_postgres(pg_url: str) -> None:
    """Autogenerate against the migrated database finds nothing to do (compare_type)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(pg_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []
    engine.dispose()


def test_upgrade_and_downgrade_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    migrate.upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)
    migrate.downgrade(url, "base")
    assert _tables(url) == set()


def test_server_refuses_outdated_schema(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))  # empty SQLite database
    with pytest.raises(SchemaOutdatedError, match="run `hadmc db upgrade`"), TestClient(app):
        pass


def _upgrade_0001_with_rows_then_head(url: str) -> None:
    """Rows written at 0001 survive 0002 (the new non-null columns get their defaults)."""
    from sqlalchemy import text

    migrate.upgrade(url, "0001")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO devices (name, credential_hash, created_at) "
                              "VALUES ('old', 'h', CURRENT_TIMESTAMP)"))
        migrate.upgrade(url)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT tags, bytes_downloaded FROM devices")).one()
        assert row[1] == 0 and row[0] in ([], "[]")
        migrate.downgrade(url, "0001")
        assert "rollouts" not in _tables(url) and "devices" in _tables(url)
        migrate.upgrade(url)
        assert _tables(url) == set(Base.metadata.tables)
    finally:
        engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'h.db'}"
        return
    request.getfixturevalue("redis_url")  # the service's backing servers must be up
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def test_0002_upgrades_existing_rows_and_downgrades(empty_url: str) -> None:
    _upgrade_0001_with_rows_then_head(empty_url)


def _api_token_expiry_round_trip(url: str) -> None:
    """A token stored at 0002 survives 0003 and never expires; 0003 goes down and up."""
    from sqlalchemy import text

    migrate.upgrade(url, "0002")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, name, created_at) "
                              "VALUES (1, 'old', CURRENT_TIMESTAMP)"))
            conn.execute(text("INSERT INTO api_tokens (user_id, name, token_hash, created_at) "
                              "VALUES (1, 'old', 'h', CURRENT_TIMESTAMP)"))
        migrate.upgrade(url, "0003")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name, expires_at FROM api_tokens")).one() == (
                "old", None)
        migrate.downgrade(url, "0002")
        columns = {c["name"] for c in inspect(engine).get_columns("api_tokens")}
        assert "expires_at" not in columns and "revoked_at" in columns
        migrate.upgrade(url)
        columns = {c["name"] for c in inspect(engine).get_columns("api_tokens")}
        assert "expires_at" in columns
    finally:
        engine.dispose()


def test_0003_api_token_expiry(empty_url: str) -> None:
    _api_token_expiry_round_trip(empty_url)


def test_0004_rollouts_keep_their_meaning_and_it_goes_down_and_up(empty_url: str) -> None:
    """A rollout made at 0003 rolls back on an automatic abort and replaces no model (what
    the service did before those settings existed); 0004 goes down and up."""
    from sqlalchemy import text

    migrate.upgrade(empty_url, "0003")
    engine = make_engine(empty_url)
    now = "CURRENT_TIMESTAMP"
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO models (id, name, format, artifact_hash, size_bytes, "
                              f"details, created_at) VALUES (1, 'm', 'onnx', 'h', 1, '{{}}', "
                              f"{now})"))
            conn.execute(text("INSERT INTO model_versions (id, model_id, number, profile, "
                              "onnx_hash, onnx_size, report_hash, summary, constraints_met, "
                              f"created_at) VALUES (1, 1, 1, 'x86-avx2', 'h', 1, 'r', '{{}}', "
                              f"TRUE, {now})"))
            conn.execute(text(
                "INSERT INTO rollouts (id, version_id, selector, waves, min_devices_per_wave, "
                "success_threshold, max_failure_rate, max_latency_regression, "
                "wave_timeout_seconds, state, current_wave, wave_started_at, created_at, "
                f"updated_at) VALUES (1, 1, '{{}}', '[100]', 1, 0.9, 0.2, 0.25, 60, 'active', "
                f"0, {now}, {now}, {now})"))
        migrate.upgrade(empty_url)
        with engine.connect() as conn:
            row = conn.execute(text("SELECT rollback_on_abort, replace_model FROM rollouts")).one()
            assert (bool(row[0]), bool(row[1])) == (True, False)
            assert conn.execute(text("SELECT signature FROM model_versions")).scalar() is None
        migrate.downgrade(empty_url, "0003")
        assert "replace_model" not in {c["name"] for c in inspect(engine).get_columns("rollouts")}
        migrate.upgrade(empty_url)
        assert _tables(empty_url) == set(Base.metadata.tables)
    finally:
        engine.dispose()


def test_0005_tokens_made_before_roles_are_admin_and_it_goes_down_and_up(empty_url: str
                                                                           ) -> None:
    """A token made at 0004 is admin (it had every right); a user's rollout action made at
    0004 gains the user's name; going down revokes the tokens that roles limited (none
    gains power) and drops the new columns; 0005 goes up again."""
    from sqlalchemy import text

    migrate.upgrade(empty_url, "0004")
    engine = make_engine(empty_url)
    now = "CURRENT_TIMESTAMP"
    try:
        with engine.begin() as conn:
            conn.execute(text(f"INSERT INTO users (id, name, created_at) VALUES (1, 'old', "
                              f"{now})"))
            conn.execute(text("INSERT INTO api_tokens (user_id, name, token_hash, created_at) "
                              f"VALUES (1, 'old', 'h0', {now})"))
            conn.execute(text("INSERT INTO models (id, name, format, artifact_hash, size_bytes, "
                              f"details, created_at) VALUES (1, 'm', 'onnx', 'h', 1, '{{}}', "
                              f"{now})"))
            conn.execute(text("INSERT INTO model_versions (id, model_id, number, profile, "
                              "onnx_hash, onnx_size, report_hash, summary, constraints_met, "
                              f"created_at) VALUES (1, 1, 1, 'x86-avx2', 'h', 1, 'r', '{{}}', "
                              f"TRUE, {now})"))
            conn.execute(text(
                "INSERT INTO rollouts (id, version_id, selector, waves, min_devices_per_wave, "
                "success_threshold, max_failure_rate, max_latency_regression, "
                "wave_timeout_seconds, state, current_wave, wave_started_at, created_by, "
                f"created_at, updated_at) VALUES (1, 1, '{{}}', '[100]', 1, 0.9, 0.2, 0.25, 60, "
                f"'paused', 0, {now}, 1, {now}, {now})"))
            conn.execute(text(
                "INSERT INTO rollout_events (rollout_id, at, kind, reason, details) VALUES "
                f"(1, {now}, 'pause', 'pause requested by user 1', '{{\"user_id\": 1}}'), "
                f"(1, {now}, 'advance', 'wave 0', '{{\"wave\": 0}}')"))
            conn.execute(text(f"INSERT INTO devices (name, credential_hash, created_at) "
                              f"VALUES ('d', 'c', {now})"))
        migrate.upgrade(empty_url, "0005")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT role FROM api_tokens")).scalar() == "admin"
            details = [json.loads(d) if isinstance(d, str) else d for d in conn.execute(
                text("SELECT details FROM rollout_events ORDER BY id")).scalars()]
            assert details == [{"user_id": 1, "user_name": "old"}, {"wave": 0}]
            row = conn.execute(text("SELECT revoked_by, tags_updated_by, tags_updated_at "
                                    "FROM devices")).one()
            assert tuple(row) == (None, None, None)
            for role in ("viewer", "operator", "admin"):
                conn.execute(text("INSERT INTO api_tokens (user_id, name, role, token_hash, "
                                  f"created_at) VALUES (1, '{role}', '{role}', 'h-{role}', "
                                  f"{now})"))
        migrate.downgrade(empty_url, "0004")
        assert "role" not in {c["name"] for c in inspect(engine).get_columns("api_tokens")}
        assert "revoked_by" not in {c["name"] for c in inspect(engine).get_columns("devices")}
        with engine.connect() as conn:
            revoked = dict(conn.execute(text("SELECT name, revoked_at IS NOT NULL "
                                             "FROM api_tokens")).all())
        assert {k: bool(v) for k, v in revoked.items()} == {
            "old": False, "viewer": True, "operator": True, "admin": False}
        migrate.upgrade(empty_url)
        assert _tables(empty_url) == set(Base.metadata.tables)
    finally:
        engine.dispose()


def test_0006_each_device_keeps_its_version_as_a_deployment_and_it_goes_down_and_up(
        empty_url: str) -> None:
    """A device's version at 0005 becomes its one deployment (the previous version stays
    when it is of the same model); a device that runs nothing gets none. Going down, each
    device gets back the versions of its first deployment; 0006 goes up again."""
    from sqlalchemy import text

    migrate.upgrade(empty_url, "0005")
    engine = make_engine(empty_url)
    now = "CURRENT_TIMESTAMP"
    try:
        with engine.begin() as conn:
            for mid in (1, 2):
                conn.execute(text("INSERT INTO models (id, name, format, artifact_hash, "
                                  f"size_bytes, details, created_at) VALUES ({mid}, 'm{mid}', "
                                  f"'onnx', 'h', 1, '{{}}', {now})"))
            for vid, mid, number in ((1, 1, 1), (2, 1, 2), (3, 2, 1)):
                conn.execute(text(
                    "INSERT INTO model_versions (id, model_id, number, profile, onnx_hash, "
                    "onnx_size, report_hash, summary, constraints_met, created_at) VALUES "
                    f"({vid}, {mid}, {number}, 'x86-avx2', 'h', 1, 'r', '{{}}', TRUE, {now})"))
            for dev, cur, prev in ((1, "2", "1"), (2, "3", "1"), (3, "NULL", "NULL")):
                conn.execute(text(
                    "INSERT INTO devices (id, name, credential_hash, current_version_id, "
                    f"previous_version_id, created_at) VALUES ({dev}, 'd{dev}', 'c{dev}', "
                    f"{cur}, {prev}, {now})"))
        migrate.upgrade(empty_url, "0006")
        columns = {c["name"] for c in inspect(engine).get_columns("devices")}
        assert "current_version_id" not in columns and "multi_model" in columns
        with engine.begin() as conn:
            rows = conn.execute(text(
                "SELECT device_id, model_id, current_version_id, previous_version_id, phase "
                "FROM deployments ORDER BY device_id")).all()
            assert [tuple(r) for r in rows] == [(1, 1, 2, 1, None), (2, 2, 3, None, None)]
            assert not any(conn.execute(text("SELECT multi_model FROM devices")).scalars())
            conn.execute(text("INSERT INTO deployments (device_id, model_id, "
                              f"current_version_id, updated_at) VALUES (1, 2, 3, {now})"))
        migrate.downgrade(empty_url, "0005")
        assert "deployments" not in _tables(empty_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, current_version_id, previous_version_id "
                                     "FROM devices ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [(1, 2, 1), (2, 3, None), (3, None, None)]
        migrate.upgrade(empty_url)
        assert _tables(empty_url) == set(Base.metadata.tables)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM deployments")).scalar() == 2
    finally:
        engine.dispose()
