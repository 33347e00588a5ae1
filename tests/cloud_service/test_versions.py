from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud_service.db import session_scope
from cloud_service.models import ModelVersion
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore
from tests.cloud_service.conftest import enroll


@pytest.fixture(scope="module")
def version(client: TestClient, settings: Settings, tiny_model: dict,
            tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A version row with real files in the store (what a finished job leaves)."""
    tmp = tmp_path_factory.mktemp("ver")
    (tmp / "model.onnx").write_bytes(bytes(range(256)) * 40)
    (tmp / "report.json").write_text(json.dumps({"schema": "test", "summary": {"speedup": 2}}))
    store = ArtifactStore(settings.artifact_dir)
    onnx_hash, size = store.ingest_file(tmp / "model.onnx")
    report_hash, _ = store.ingest_file(tmp / "report.json")
    with session_scope(settings.database_url) as s:
        row = ModelVersion(model_id=tiny_model["id"], number=100, profile="x86-avx2",
                           onnx_hash=onnx_hash, onnx_size=size, report_hash=report_hash,
                           summary={"speedup": 2}, constraints_met=True)
        s.add(row)
        s.flush()
        return {"id": row.id, "onnx": (tmp / "model.onnx").read_bytes(), "hash": onnx_hash}


def test_metadata_report_and_list(client: TestClient, auth: dict, version: dict,
                                  tiny_model: dict) -> None:
    meta = client.get(f"/v1/versions/{version['id']}", headers=auth).json()
    assert meta["number"] == 100 and meta["onnx_hash"] == version["hash"]
    report = client.get(f"/v1/versions/{version['id']}/report", headers=auth).json()
    assert report["summary"]["speedup"] == 2
    listed = client.get("/v1/versions", params={"model_id": tiny_model["id"]},
                        headers=auth).json()
    assert version["id"] in [v["id"] for v in listed["data"]]
    assert client.get("/v1/versions/999999", headers=auth).status_code == 404


def test_download_full_and_ranges(client: TestClient, auth: dict, version: dict) -> None:
    url = f"/v1/versions/{version['id']}/model.onnx"
    full = client.get(url, headers=auth)
    assert full.status_code == 200 and full.content == version["onnx"]
    assert full.headers["etag"] == f'"{version["hash"]}"'
    part = client.get(url, headers={**auth, "Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == version["onnx"][100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(version['onnx'])}"
    tail = client.get(url, headers={**auth, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == version["onnx"][-10:]
    bad = client.get(url, headers={**auth, "Range": f"bytes={10**9}-"})
    assert bad.status_code == 416


def test_device_may_download(client: TestClient, auth: dict, version: dict) -> None:
    dev = enroll(client, auth, "downloader")
    r = client.get(f"/v1/versions/{version['id']}/model.onnx",
                   headers={"Authorization": f"Bearer {dev['credential']}"})
    assert r.status_code == 200 and r.content == version["onnx"]


def test_artifact_files_are_hash_named(settings: Settings, version: dict) -> None:
    path = ArtifactStore(settings.artifact_dir).path(version["hash"])
    assert path.name == version["hash"] and Path(path).read_bytes() == version["onnx"]


def test_unreadable_stored_report_is_a_clear_problem(client: TestClient, auth: dict,
                                                     settings: Settings, tiny_model: dict
                                                     ) -> None:
    """A report that is not JSON (here: the ONNX bytes) answers a problem naming the
    version, not an unhandled error."""
    store = ArtifactStore(settings.artifact_dir)
    digest, size = store.put_bytes(bytes(range(256)) * 4)
    with session_scope(settings.database_url) as s:
        row = ModelVersion(model_id=tiny_model["id"], number=101, profile="x86-avx2",
                           onnx_hash=digest, onnx_size=size, report_hash=digest, summary={},
                           constraints_met=True)
        s.add(row)
        s.flush()
        vid = row.id
    r = client.get(f"/v1/versions/{vid}/report", headers=auth)
    assert r.status_code == 500 and r.headers["content-type"].startswith("application/problem")
    assert r.json()["title"] == "Stored data is corrupt"
    assert f"version {vid}" in r.json()["detail"]
    with session_scope(settings.database_url) as s:  # leave no corrupt row for later tests
        s.delete(s.get(ModelVersion, vid))
