from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.settings import Settings

OCTET = {"Content-Type": "application/octet-stream"}


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _npz_member(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a)
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_builtin_dataset(client: TestClient, auth: dict) -> None:
    r = client.post("/v1/datasets", json={"builtin": "digits"}, headers=auth)
    assert r.status_code == 201
    body = r.json()
    assert body["builtin"] == "digits" and body["name"] == "digits"
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth).json() == body
    assert client.get("/v1/datasets", headers=auth).json()["count"] >= 1


def test_unknown_builtin_is_422(client: TestClient, auth: dict) -> None:
    r = client.post("/v1/datasets", json={"builtin": "imagenet"}, headers=auth)
    assert r.status_code == 422


def test_upload_npz(client: TestClient, auth: dict) -> None:
    rng = np.random.default_rng(0)
    data = _npz(x=rng.random((50, 8, 8), dtype=np.float32), y=np.arange(50) % 5)
    r = client.post("/v1/datasets/upload", params={"name": "mini"}, content=data,
                    headers={**auth, **OCTET})
    assert r.status_code == 201, r.text
    details = r.json()["details"]
    assert details["num_classes"] == 5 and details["in_channels"] == 1
    assert sum(details["samples"].values()) == 50


@pytest.mark.parametrize("payload", [
    _npz(x=np.array([{"a": 1}], dtype=object), y=np.array([0])),
    _npz(a=np.zeros(3)),
    b"PK\x03\x04 definitely not a zip",
    _zip({"x.npy": _npy_header((10**9, 1, 32, 32)) + bytes(64),
          "y.npy": _npz_member(np.zeros(10**9 // 10**6, np.int64))}),
    _zip({**{f"a{i}.npy": _npz_member(np.zeros(1)) for i in range(100)},
          "x.npy": _npz_member(np.zeros((20, 8, 8))), "y.npy": _npz_member(np.zeros(20))}),
    _zip({"x.npy": _npz_member(np.zeros((20, 8, 8))), "y.npy": _npz_member(np.zeros(20)),
          "notes.txt": b"hello"}),
    _zip({"x.npy": _npz_member(np.zeros((20, 8, 8))), "y.npy": _npz_member(np.zeros(20))},
         zipfile.ZIP_BZIP2),
], ids=["object-array-pickle", "missing-x-y", "not-a-zip", "header-declares-more-than-held",
        "too-many-members", "not-an-array-member", "bzip2-member"])
def test_bad_npz_is_422(client: TestClient, auth: dict, payload: bytes) -> None:
    r = client.post("/v1/datasets/upload", params={"name": "bad"}, content=payload,
                    headers={**auth, **OCTET})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """About 1 MB on the wire, 1 GiB of zero images once inflated; built a MiB at a time so
    the test itself never holds the array."""
    n = 65536
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            f.write(_npy_header((n, 1, 128, 128)))
            zeros = bytes(1 << 20)
            for _ in range(1024):
                f.write(zeros)
        with z.open("y.npy", "w") as f:
            np.lib.format.write_array(f, np.zeros(n, np.int64))
    return buf.getvalue()


def test_zip_bomb_is_refused_without_inflating(client: TestClient, auth: dict,
                                               bomb: bytes) -> None:
    assert len(bomb) < 2 * 2**20
    tracemalloc.start()
    try:
        r = client.post("/v1/datasets/upload", params={"name": "bomb"}, content=bomb,
                        headers={**auth, **OCTET})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "HADMC_MAX_DATASET_DECOMPRESSED_MB" in r.json()["detail"]
    assert peak < 64 * 2**20, f"validation allocated {peak >> 20} MiB"


@pytest.mark.parametrize("limits,setting", [
    ({"max_dataset_samples": 40}, "HADMC_MAX_DATASET_SAMPLES"),
    ({"max_dataset_decompressed_mb": 0.01}, "HADMC_MAX_DATASET_DECOMPRESSED_MB"),
], ids=["samples", "decompressed-bytes"])
def test_dataset_limits_are_settings(settings: Settings, auth: dict, limits: dict,
                                     setting: str) -> None:
    from cloud_service.app import create_app

    data = _npz(x=np.zeros((50, 8, 8), np.float32), y=np.arange(50) % 5)  # 12.8 kB
    with TestClient(create_app(settings.model_copy(update=limits))) as c:
        r = c.post("/v1/datasets/upload", params={"name": "big"}, content=data,
                   headers={**auth, **OCTET})
    assert r.status_code == 413, r.text
    assert setting in r.json()["detail"]
