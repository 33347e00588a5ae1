"""Fixtures: a fresh PostgreSQL database per session, real Redis, the app, tokens, files.

PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379) must be running;
when they are not, the tests fail with a message saying so (they never skip).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_service import migrate
from cloud_service.app import create_app
from cloud_service.db import session_scope
from cloud_service.services.auth import Role, create_user_token
from cloud_service.settings import Settings

PG_HOST = os.environ.get("HADMC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("HADMC_TEST_REDIS", "redis://127.0.0.1:6379/0")
TINY_CONFIG = {"prune": {"enabled": False}, "distill": {"enabled": False},
               "quantize": {"keep_ladder": [0], "calib_samples": 32, "sensitivity_samples": 16},
               "measure": {"runs": 5, "warmup": 2}}


def _admin_conn():  # type: ignore[no-untyped-def]
    import psycopg

    dsn = PG_HOST.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {dsn} ({e}); the cloud tests need a "
                    "real server (trust auth, user postgres)", pytrace=False)


def create_database() -> str:
    name = f"hadmc_test_{uuid.uuid4().hex[:10]}"
    with _admin_conn() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_HOST}/{name}"


def drop_database(url: str) -> None:
    from cloud_service.db import get_engine

    get_engine.cache_clear()
    name = url.rsplit("/", 1)[1]
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({e}); the cloud tests need a real "
                    "server", pytrace=False)
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated database for the whole session, dropped at the end."""
    url = create_database()
    try:
        migrate.upgrade(url)
        yield url
    finally:
        drop_database(url)


def make_settings(tmp: Path, **kw: object) -> Settings:
    base: dict[str, object] = {
        "database_url": "sqlite:///" + str(tmp / "hadmc.db"), "artifact_dir": tmp / "artifacts",
        "signing_key_file": tmp / "keys" / "signing.key", "reconcile_interval_seconds": 0,
        "rollout_interval_seconds": 0,
        "enroll_rate_per_minute": 100000, "embedded_worker": False, "max_upload_mb": 4}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str) -> Settings:
    """Postgres + Redis; jobs go to a queue no worker reads (they stay queued)."""
    return make_settings(tmp_path_factory.mktemp("svc"), database_url=pg_url,
                         broker_url=redis_url, queue=f"hadmc_test_{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def new_user_token(settings: Settings, user: str = "alice", role: Role = "admin") -> str:
    """A new API token of ``user`` (admin by default: the tests' user may do everything)."""
    with session_scope(settings.database_url) as s:
        return create_user_token(session=s, user_name=user, role=role)


@pytest.fixture(scope="session")
def user_token(settings: Settings) -> str:
    return new_user_token(settings)


@pytest.fixture(scope="session")
def auth(user_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token}"}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hadmc_core.models import ArchSpec, build_model, save_weights

    spec = ArchSpec("densenet", 1, 10, "small", 0.5)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(build_model(spec), path, spec)
    return path


def upload_model(client: TestClient, auth: dict[str, str], path: Path, **params: object) -> dict:
    params = {"name": "tiny", "arch": "densenet", "width": 0.5, **params}
    r = client.post("/v1/models", params=params, content=path.read_bytes(),
                    headers={**auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="session")
def tiny_model(client: TestClient, auth: dict[str, str], tiny_weights: Path) -> dict:
    return upload_model(client, auth, tiny_weights)


@pytest.fixture(scope="session")
def digits(client: TestClient, auth: dict[str, str]) -> dict:
    r = client.post("/v1/datasets", json={"builtin": "digits"}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()


def make_onnx(path: Path, weights: np.ndarray, batch: int | str = "N") -> Path:
    """A one-MatMul ONNX graph ``y = x @ weights`` (input [batch, rows])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, weights.shape[1]])],
        initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def insert_version(settings: Settings, model_id: int, number: int, path: Path) -> int:
    """A version row for the ONNX file ``path`` (as versions made before manifests
    and probes existed: no manifest, no probe)."""
    from cloud_service.models import ModelVersion
    from cloud_service.storage import ArtifactStore

    store = ArtifactStore(settings.artifact_dir)
    digest, size = store.ingest_file(path)
    report_hash, _ = store.put_bytes(json.dumps({"schema": "test"}).encode())
    with session_scope(settings.database_url) as s:
        row = ModelVersion(model_id=model_id, number=number, profile="x86-avx2",
                           onnx_hash=digest, onnx_size=size, report_hash=report_hash,
                           summary={})
        s.add(row)
        s.flush()
        return row.id


def publish_onnx(client: TestClient, auth: dict[str, str], model_id: int, data: bytes,
                 profile: str = "x86-avx2") -> dict:
    r = client.post(f"/v1/models/{model_id}/versions", params={"profile": profile},
                    content=data, headers={**auth, "Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return r.json()


def device_profile(base: str = "x86-avx2", **changes: object) -> dict:
    """A device's reported profile: a built-in one as an agent with ONNX Runtime reports
    it (``onnxruntime-cpu-<major.minor>``)."""
    from hadmc_core.hal import load_profile

    prof = load_profile(base).model_dump(mode="json")
    prof["runtimes"] = [f"{r}-1.20" for r in prof["runtimes"]]
    return {**prof, **changes}


def enroll(client: TestClient, auth: dict[str, str], name: str = "dev",
           profile: dict | None = None) -> dict:
    """A new device, reporting ``profile`` (default: an x86 AVX2 CPU with ONNX Runtime;
    pass ``{}`` for a device that has not reported one)."""
    r = client.post("/v1/enrollment-tokens", json={"max_uses": 1}, headers=auth)
    assert r.status_code == 201, r.text
    prof = device_profile() if profile is None else (profile or None)
    r = client.post("/v1/devices/register",
                    json={"enrollment_token": r.json()["token"], "name": name,
                          "profile": prof})
    assert r.status_code == 201, r.text
    return r.json()
