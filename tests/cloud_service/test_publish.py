"""Publishing a ready ONNX model: the version, its stored signed manifest and its probe."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.db import session_scope
from cloud_service.models import ModelVersion
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore
from tests.cloud_service.conftest import enroll, insert_version, make_onnx, publish_onnx

RAW = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    w = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    return make_onnx(tmp_path_factory.mktemp("pub") / "m.onnx", w).read_bytes()


@pytest.fixture(scope="module")
def published(client: TestClient, auth: dict, tiny_model: dict, onnx_bytes: bytes) -> dict:
    return publish_onnx(client, auth, tiny_model["id"], onnx_bytes)


def _npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_publish_stores_manifest_and_probe(client: TestClient, auth: dict, published: dict,
                                           settings: Settings, onnx_bytes: bytes) -> None:
    from hadmc_core.delta import SignedManifest, load_public

    assert published["number"] >= 1 and published["onnx_size"] == len(onnx_bytes)
    with session_scope(settings.database_url) as s:
        row = s.get(ModelVersion, published["id"])
        assert row is not None and row.manifest_hash and row.probe_hash
        stored = ArtifactStore(settings.artifact_dir).path(row.manifest_hash).read_bytes()
    dev = enroll(client, auth, "pub-dev")
    me = {"Authorization": f"Bearer {dev['credential']}"}
    served = [client.get(f"/v1/versions/{published['id']}/manifest", headers=me).content
              for _ in range(2)]
    assert served[0] == served[1] == stored  # the same bytes every time
    SignedManifest.from_bytes(stored).verify(load_public(dev["manifest_public_key"].encode()))
    probe = _npz(client.get(f"/v1/versions/{published['id']}/probe", headers=me).content)
    assert set(probe) == {"inputs", "outputs", "atol", "rtol"}
    assert probe["inputs"].shape == (2, 16) and probe["inputs"].dtype == np.float32
    w = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    np.testing.assert_allclose(probe["outputs"], probe["inputs"] @ w, rtol=1e-5, atol=1e-5)
    assert probe["atol"].shape == () and float(probe["rtol"]) > 0


def test_next_publication_gets_the_next_number(client: TestClient, auth: dict,
                                               published: dict, onnx_bytes: bytes) -> None:
    again = publish_onnx(client, auth, published["model_id"], onnx_bytes)
    assert again["number"] == published["number"] + 1


@pytest.mark.parametrize("range_,status", [
    ("pages=0-9", 400),
    ("bytes=abc", 400),
    ("bytes=20-10", 400),
    (f"bytes={10**9}-", 416),
], ids=["other-unit", "not-numeric", "end-before-start", "beyond-the-end"])
@pytest.mark.parametrize("file", ["model.onnx", "probe"])
def test_range_errors_are_problems(client: TestClient, auth: dict, published: dict,
                                   file: str, range_: str, status: int) -> None:
    url = f"/v1/versions/{published['id']}/{file}"
    size = len(client.get(url, headers=auth).content)
    r = client.get(url, headers={**auth, "Range": range_})
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == status and "Range" in r.json()["detail"]
    if status == 416:
        assert r.headers["content-range"] == f"bytes */{size}"


def test_publish_with_a_relative_artifact_dir(settings: Settings, auth: dict, tiny_model: dict,
                                              onnx_bytes: bytes, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """As `hadmc serve` in a fresh directory: the default artifact dir is relative."""
    from cloud_service.app import create_app

    monkeypatch.chdir(tmp_path)
    relative = settings.model_copy(update={"artifact_dir": Path("hadmc-artifacts")})
    with TestClient(create_app(relative)) as c:
        version = publish_onnx(c, auth, tiny_model["id"], onnx_bytes)
        r = c.get(f"/v1/versions/{version['id']}/model.onnx", headers=auth)
    assert r.status_code == 200 and r.content == onnx_bytes
    assert (tmp_path / "hadmc-artifacts" / "objects").is_dir()


@pytest.mark.parametrize("body,params,status", [
    (b"\x80\x04K\x01.", {"profile": "x86-avx2"}, 422),      # a pickle is not ONNX
    (b"", {"profile": "x86-avx2"}, 422),
    (b"onnx", {"profile": "/etc/passwd"}, 422),
    (b"onnx", {}, 422),
], ids=["pickle", "empty", "path-profile", "no-profile"])
def test_publish_rejects_bad_input(client: TestClient, auth: dict, tiny_model: dict,
                                   body: bytes, params: dict, status: int) -> None:
    r = client.post(f"/v1/models/{tiny_model['id']}/versions", params=params, content=body,
                    headers={**auth, **RAW})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_publish_to_missing_model_is_404(client: TestClient, auth: dict,
                                         onnx_bytes: bytes) -> None:
    r = client.post("/v1/models/999999/versions", params={"profile": "x86-avx2"},
                    content=onnx_bytes, headers={**auth, **RAW})
    assert r.status_code == 404


def test_old_rows_get_manifest_and_probe_lazily(client: TestClient, auth: dict,
                                                settings: Settings, tiny_model: dict,
                                                onnx_bytes: bytes, tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(onnx_bytes)
    vid = insert_version(settings, tiny_model["id"], 300, tmp_path / "m.onnx")
    assert client.get(f"/v1/versions/{vid}/probe", headers=auth).status_code == 200
    first = client.get(f"/v1/versions/{vid}/manifest", headers=auth).content
    assert client.get(f"/v1/versions/{vid}/manifest", headers=auth).content == first
    with session_scope(settings.database_url) as s:
        row = s.get(ModelVersion, vid)
        assert row is not None and row.manifest_hash and row.probe_hash


def _probe_bytes(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


GOOD = {"inputs": np.ones((3, 16), np.float32), "outputs": np.zeros((3, 4), np.float32),
        "atol": np.float64(0.1), "rtol": np.float64(0.01)}


def test_put_probe_replaces_it(client: TestClient, auth: dict, published: dict) -> None:
    url = f"/v1/versions/{published['id']}/probe"
    r = client.put(url, content=_probe_bytes(**GOOD), headers={**auth, **RAW})
    assert r.status_code == 200, r.text
    got = _npz(client.get(url, headers=auth).content)
    assert got["inputs"].shape == (3, 16) and float(got["atol"]) == pytest.approx(0.1)


@pytest.mark.parametrize("arrays", [
    {**GOOD, "inputs": np.ones((3, 16), np.float64)},
    {**GOOD, "outputs": np.zeros((2, 4), np.float32)},
    {**GOOD, "atol": np.array([0.1])},
    {**GOOD, "rtol": np.float64(np.nan)},
    {k: v for k, v in GOOD.items() if k != "rtol"},
    {**GOOD, "extra": np.zeros(1)},
    {**GOOD, "outputs": np.array([object()] * 3, dtype=object)},
], ids=["f64-inputs", "batch-mismatch", "atol-array", "nan-rtol", "missing", "extra",
        "pickled-objects"])
def test_put_probe_rejects_bad_npz(client: TestClient, auth: dict, published: dict,
                                   arrays: dict) -> None:
    r = client.put(f"/v1/versions/{published['id']}/probe", content=_probe_bytes(**arrays),
                   headers={**auth, **RAW})
    assert r.status_code == 422, r.text


def test_put_probe_rejects_garbage(client: TestClient, auth: dict, published: dict) -> None:
    r = client.put(f"/v1/versions/{published['id']}/probe", content=b"PK\x03\x04nope",
                   headers={**auth, **RAW})
    assert r.status_code == 422, r.text


def test_put_probe_refuses_a_header_larger_than_its_data(client: TestClient, auth: dict,
                                                         published: dict) -> None:
    """numpy would allocate what `inputs` declares (4 TB) before reading its 64 bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, value in GOOD.items():
            member = io.BytesIO()
            if name == "inputs":
                np.lib.format.write_array_header_1_0(member, {
                    "descr": "<f4", "fortran_order": False, "shape": (10**12,)})
                member.write(bytes(64))
            else:
                np.lib.format.write_array(member, np.asarray(value))
            z.writestr(f"{name}.npy", member.getvalue())
    r = client.put(f"/v1/versions/{published['id']}/probe", content=buf.getvalue(),
                   headers={**auth, **RAW})
    assert r.status_code == 422, r.text
    assert "declares shape (1000000000000,)" in r.json()["detail"]


def test_manifest_is_signed_again_only_near_expiry(settings: Settings, published: dict) -> None:
    import json

    from cloud_service.security import ensure_signing_key
    from cloud_service.services.publish import RESIGN_BEFORE_SECONDS, ensure_manifest

    store, key = ArtifactStore(settings.artifact_dir), ensure_signing_key(settings.signing_key_file)
    with session_scope(settings.database_url) as s:
        row = s.get(ModelVersion, published["id"])
        assert row is not None
        first = ensure_manifest(session=s, store=store, version=row, key=key)
        expires = json.loads(first)["manifest"]["expires"]
        early = expires - RESIGN_BEFORE_SECONDS - 60
        assert ensure_manifest(session=s, store=store, version=row, key=key, now=early) == first
        late = ensure_manifest(session=s, store=store, version=row, key=key,
                               now=expires - RESIGN_BEFORE_SECONDS + 60)
        assert late != first and row.manifest_hash == store.put_bytes(late)[0]
