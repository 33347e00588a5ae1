from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

OCTET = {"Content-Type": "application/octet-stream"}


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
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
], ids=["object-array-pickle", "missing-x-y", "not-a-zip"])
def test_bad_npz_is_422(client: TestClient, auth: dict, payload: bytes) -> None:
    r = client.post("/v1/datasets/upload", params={"name": "bad"}, content=payload,
                    headers={**auth, **OCTET})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
