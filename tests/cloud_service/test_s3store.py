"""The S3 artifact store against a real S3 protocol server (moto's, over HTTP on loopback)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import blake3
import pytest

from cloud_service.errors import DependencyError, IntegrityError
from cloud_service.s3store import S3ArtifactStore, make_store
from tests.cloud_service.conftest import make_settings

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(endpoint: str) -> tuple[str, object]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test-secret")
    name = f"hadmc-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    return name, client


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 4096):
        yield data[i:i + 4096]


def test_objects_reach_the_bucket_and_other_caches(tmp_path: Path, bucket) -> None:
    name, client = bucket
    data = b"weights" * 10000
    a = S3ArtifactStore(tmp_path / "a", name, client, prefix="prod")
    digest, size = asyncio.run(a.ingest_stream(_chunks(data), 10**6))
    assert size == len(data) and digest == blake3.blake3(data).hexdigest()
    head = client.head_object(Bucket=name, Key=f"prod/objects/{digest[:2]}/{digest}")
    assert head["ContentLength"] == len(data)

    b = S3ArtifactStore(tmp_path / "b", name, client, prefix="prod")  # another machine
    assert not (tmp_path / "b" / "objects" / digest[:2] / digest).exists()
    assert b.exists(digest)
    assert b.path(digest).read_bytes() == data  # fetched, verified, cached
    assert b.ingest_file(b.path(digest)) == (digest, len(data))  # stored once
    missing = "0" * 64
    assert not b.exists(missing) and not b.path(missing).exists()


def test_an_object_altered_in_the_bucket_is_refused(tmp_path: Path, bucket) -> None:
    name, client = bucket
    a = S3ArtifactStore(tmp_path / "a", name, client)
    digest, _ = a.ingest_file(_write(tmp_path / "f.bin", b"good" * 1000))
    client.put_object(Bucket=name, Key=a.key(digest), Body=b"evil" * 1000)
    b = S3ArtifactStore(tmp_path / "b", name, client)
    with pytest.raises(IntegrityError, match="altered in the object store"):
        b.path(digest)
    assert not any((tmp_path / "b" / "objects").rglob("*")) or \
        not (tmp_path / "b" / "objects" / digest[:2] / digest).exists()
    assert list((tmp_path / "b" / "tmp").iterdir()) == []


def test_a_missing_bucket_is_a_clear_error(tmp_path: Path, endpoint: str) -> None:
    settings = make_settings(tmp_path, s3_bucket="no-such-bucket", s3_endpoint_url=endpoint,
                             s3_region="us-east-1", s3_access_key_id="test",
                             s3_secret_access_key="test-secret")
    with pytest.raises(DependencyError, match="'no-such-bucket' is not reachable"):
        make_store(settings)


def test_settings_choose_the_store(tmp_path: Path, bucket, endpoint: str) -> None:
    assert type(make_store(make_settings(tmp_path))).__name__ == "ArtifactStore"
    store = make_store(make_settings(tmp_path, s3_bucket=bucket[0], s3_endpoint_url=endpoint,
                                     s3_region="us-east-1", s3_access_key_id="test",
                                     s3_secret_access_key="test-secret"))
    assert isinstance(store, S3ArtifactStore)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_serve_refuses_an_unreachable_bucket_in_one_line(tmp_path: Path, endpoint: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HADMC_DATABASE_URL": f"sqlite:///{tmp_path}/h.db",
           "HADMC_ARTIFACT_DIR": str(tmp_path / "art"), "HADMC_S3_BUCKET": "nope",
           "HADMC_S3_ENDPOINT_URL": endpoint, "HADMC_S3_REGION": "us-east-1",
           "HADMC_S3_ACCESS_KEY_ID": "test", "HADMC_S3_SECRET_ACCESS_KEY": "test-secret",
           "HADMC_SIGNING_KEY_FILE": str(tmp_path / "k.key")}
    hadmc = str(Path(sys.executable).parent / "hadmc")
    subprocess.run([hadmc, "db", "upgrade"], env=env, check=True, capture_output=True)
    r = subprocess.run([hadmc, "serve", "--port", "1"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: the artifact bucket 'nope' is not reachable")
    assert "Traceback" not in r.stderr
