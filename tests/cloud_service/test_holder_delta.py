"""Deltas for any holder: a device that holds a version this server never saw (restored
from a backup, moved from another server) sends its own manifest and gets a delta built
against the chunks it lists (``POST /v1/versions/{id}/delta``), on real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.settings import Settings
from tests.cloud_service.conftest import enroll, insert_version, make_onnx


@pytest.fixture(scope="module")
def held(settings: Settings, tiny_model: dict, tmp_path_factory: pytest.TempPathFactory
         ) -> dict:
    """A target version on this server, and a file with most of its weights that only
    "another server" knew: signed with another key, never uploaded here."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from hadmc_core.delta import build_manifest, sign

    tmp = tmp_path_factory.mktemp("holder")
    w = np.random.default_rng(3).standard_normal((256, 512)).astype(np.float32)
    other = w.copy()
    other[:16] -= 0.25                      # the device's version differs in a few rows
    target = make_onnx(tmp / "target.onnx", w, batch=1)
    vid = insert_version(settings, tiny_model["id"], 301, target)
    (tmp / "device").mkdir()
    device_file = make_onnx(tmp / "device" / "model.onnx", other, batch=1)
    other_key = Ed25519PrivateKey.generate()
    manifest = sign(build_manifest(device_file, model="model-77", version=4), other_key)
    return {"id": vid, "target": target.read_bytes(), "file": device_file,
            "manifest": manifest, "tmp": tmp}


def post(client: TestClient, headers: dict, vid: int, body: bytes,
         ctype: str = "application/json"):  # type: ignore[no-untyped-def]
    return client.post(f"/v1/versions/{vid}/delta", content=body,
                       headers={**headers, "Content-Type": ctype})


def test_a_device_with_a_version_from_another_server_gets_a_small_delta(
        client: TestClient, auth: dict, held: dict, tmp_path: Path) -> None:
    from hadmc_core.delta import apply_delta, load_public

    dev = enroll(client, auth, "holder-dev")
    me = {"Authorization": f"Bearer {dev['credential']}"}
    r = post(client, me, held["id"], held["manifest"].to_bytes())
    assert r.status_code == 200, r.text
    assert len(r.content) < len(held["target"]) // 4, (len(r.content), len(held["target"]))
    (tmp_path / "d.delta").write_bytes(r.content)
    out = tmp_path / "new" / "model.onnx"
    out.parent.mkdir()
    public = load_public(dev["manifest_public_key"].encode())
    m = apply_delta(held["file"], tmp_path / "d.delta", out, public_key=public)
    assert out.read_bytes() == held["target"] and m.version == 301
    # the bytes count for the device; a POST answers whole (a Range is for GET)
    again = client.post(f"/v1/versions/{held['id']}/delta",
                        content=held["manifest"].to_bytes(),
                        headers={**me, "Content-Type": "application/json",
                                 "Range": "bytes=100-"})
    assert again.status_code == 200 and again.content == r.content
    got = client.get(f"/v1/devices/{dev['device_id']}", headers=auth).json()
    assert got["bytes_downloaded"] == 2 * len(r.content)
    # a bare (unsigned) manifest is as good: the device vouches for its own files
    bare = post(client, me, held["id"], held["manifest"].manifest.to_bytes())
    assert bare.status_code == 200 and bare.content == r.content


def test_nothing_in_common_is_the_full_file_compressed(client: TestClient, auth: dict,
                                                       held: dict) -> None:
    from hadmc_core.delta import build_manifest

    alien = make_onnx(held["tmp"] / "alien.onnx",
                      np.random.default_rng(9).standard_normal((256, 512)).astype(np.float32),
                      batch=1)
    r = post(client, auth, held["id"], build_manifest(alien).to_bytes())
    assert r.status_code == 200, r.text
    assert len(r.content) <= len(held["target"]) + 4096  # the "full" op, never more


def _problem(r, status: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail


def test_hostile_manifests_are_problems(client: TestClient, auth: dict, held: dict,
                                        settings: Settings) -> None:
    from hadmc_core.delta.manifest import canonical, hash_bytes

    vid, good = held["id"], held["manifest"].manifest.to_dict()
    _problem(post(client, auth, vid, b"{not json"), 422, "not valid JSON")
    _problem(post(client, auth, vid, b"[1, 2]"), 422, "not usable")
    _problem(post(client, auth, vid, json.dumps({**good, "files": "x"}).encode()), 422)
    # a chunk hash altered, the root left as it was: the root no longer matches
    bad = json.loads(json.dumps(good))
    bad["files"][0]["segments"][-1]["chunks"][0] = "0" * 64
    _problem(post(client, auth, vid, canonical(bad)), 422, "root hash")
    # ... and with the root recomputed: the file's hash is not what its chunks give
    body = {k: v for k, v in bad.items() if k != "root"}
    bad["root"] = hash_bytes(canonical(body))
    _problem(post(client, auth, vid, canonical(bad)), 422, "chunk hashes give")
    # another chunk size: nothing could match, so the device is told which to use
    from hadmc_core.delta import build_manifest

    small = build_manifest(held["file"], chunk_size=4096).to_bytes()
    _problem(post(client, auth, vid, small), 422, "chunk_size=65536")
    # a huge manifest: over the JSON body limit, refused before it is read
    huge = held["manifest"].to_bytes() + b" " * settings.max_json_body_bytes
    _problem(post(client, auth, vid, huge), 413, "HADMC_MAX_JSON_BODY_KB")
    _problem(post(client, auth, vid, held["manifest"].to_bytes(), "text/plain"), 415)
    _problem(post(client, auth, 999999, held["manifest"].to_bytes()), 404)
    assert post(client, {}, vid, held["manifest"].to_bytes()).status_code == 401
