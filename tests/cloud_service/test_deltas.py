"""Signed manifests and deltas between two real ONNX versions, applied and verified with
the public key a device receives at registration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.db import session_scope
from cloud_service.models import ModelVersion
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore
from tests.cloud_service.conftest import enroll, insert_version, make_onnx


@pytest.fixture(scope="module")
def pair(settings: Settings, tiny_model: dict, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[int, int, bytes]:
    tmp = tmp_path_factory.mktemp("delta")
    w1 = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    w2 = w1.copy()
    w2[:8] += 0.5  # a small change: most chunks are shared
    ids = [insert_version(settings, tiny_model["id"], number,
                          make_onnx(tmp / f"v{number}.onnx", w, batch=1))
           for number, w in ((201, w1), (202, w2))]
    return ids[0], ids[1], (tmp / "v202.onnx").read_bytes()


def test_device_applies_a_signed_delta(client: TestClient, auth: dict, pair: tuple,
                                       tmp_path: Path) -> None:
    from hadmc_core.delta import SignedManifest, apply_delta, load_public

    v1, v2, v2_bytes = pair
    dev = enroll(client, auth, "delta-dev")
    me = {"Authorization": f"Bearer {dev['credential']}"}
    public = load_public(dev["manifest_public_key"].encode())
    old = tmp_path / "model.onnx"
    old.write_bytes(client.get(f"/v1/versions/{v1}/model.onnx", headers=me).content)
    r = client.get(f"/v1/versions/{v2}/delta", params={"from": v1}, headers=me)
    assert r.status_code == 200, r.text
    assert len(r.content) < len(v2_bytes) // 2
    (tmp_path / "d.delta").write_bytes(r.content)
    out = tmp_path / "new" / "model.onnx"
    out.parent.mkdir()
    m = apply_delta(old, tmp_path / "d.delta", out, public_key=public)
    assert out.read_bytes() == v2_bytes and m.version == 202
    signed = SignedManifest.from_bytes(
        client.get(f"/v1/versions/{v2}/manifest", headers=me).content)
    signed.verify(public)
    assert signed.manifest.version == 202
    assert m.to_bytes() == signed.manifest.to_bytes()  # the delta carries the stored manifest


def test_delta_is_cached_once_and_resumable(client: TestClient, auth: dict, pair: tuple,
                                            settings: Settings) -> None:
    from sqlalchemy import select

    from cloud_service.models import Delta

    v1, v2, _ = pair
    url = f"/v1/versions/{v1}/delta"
    first = client.get(url, params={"from": v2}, headers=auth)
    again = client.get(url, params={"from": v2}, headers=auth)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content and first.headers["etag"] == again.headers["etag"]
    with session_scope(settings.database_url) as s:
        rows = s.scalars(select(Delta).where(Delta.base_version_id == v2,
                                             Delta.target_version_id == v1)).all()
        assert len(rows) == 1 and rows[0].size == len(first.content)
        assert f'"{rows[0].artifact_hash}"' == first.headers["etag"]
    part = client.get(url, params={"from": v2}, headers={**auth, "Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == first.content[10:]
    assert part.headers["content-range"] == f"bytes 10-{len(first.content) - 1}/" \
                                            f"{len(first.content)}"


def test_delta_errors(client: TestClient, auth: dict, pair: tuple) -> None:
    v1, v2, _ = pair
    assert client.get(f"/v1/versions/{v2}/delta", params={"from": v2},
                      headers=auth).status_code == 422
    assert client.get(f"/v1/versions/{v2}/delta", params={"from": 999999},
                      headers=auth).status_code == 404
    assert client.get(f"/v1/versions/{v2}/delta", headers=auth).status_code == 422


def test_concurrent_first_requests_store_one_delta(settings: Settings, pair: tuple,
                                                   tiny_model: dict, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from cloud_service.db import get_sessionmaker
    from cloud_service.models import Delta
    from cloud_service.security import ensure_signing_key
    from cloud_service.services.deltas import get_delta

    v1, _, _ = pair
    store = ArtifactStore(settings.artifact_dir)
    w = np.random.default_rng(5).standard_normal((256, 256)).astype(np.float32)
    v3 = insert_version(settings, tiny_model["id"], 203,
                        make_onnx(tmp_path / "v3.onnx", w, batch=1))
    key = ensure_signing_key(settings.signing_key_file)

    def fetch(_: int) -> tuple[str, str]:
        with get_sessionmaker(settings.database_url)() as s:
            base, target = s.get(ModelVersion, v1), s.get(ModelVersion, v3)
            got = get_delta(session=s, store=store, base=base, target=target, key=key)
            s.commit()
            return got.artifact_hash, target.manifest_hash or ""

    with ThreadPoolExecutor(4) as pool:
        results = set(pool.map(fetch, range(4)))
    assert len(results) == 1  # one manifest, one delta, whoever computed it
    with session_scope(settings.database_url) as s:
        rows = s.scalars(select(Delta).where(Delta.target_version_id == v3)).all()
        assert len(rows) == 1 and store.exists(rows[0].artifact_hash)


def test_a_delta_cached_in_an_older_format_is_encoded_again(
        client: TestClient, auth: dict, pair: tuple, settings: Settings) -> None:
    from cloud_service.models import Delta
    from hadmc_core.delta.codec import MAGIC

    v1, v2, _ = pair
    url = f"/v1/versions/{v2}/delta"
    first = client.get(url, params={"from": v1}, headers=auth)
    assert first.status_code == 200 and first.content.startswith(MAGIC)
    old = b"HDMCDLT2" + first.content[8:]  # what an older release cached
    digest, size = ArtifactStore(settings.artifact_dir).put_bytes(old)
    with session_scope(settings.database_url) as s:
        row = s.query(Delta).filter_by(base_version_id=v1, target_version_id=v2).one()
        row.artifact_hash, row.size = digest, size
    again = client.get(url, params={"from": v1}, headers=auth)
    assert again.status_code == 200 and again.content == first.content
