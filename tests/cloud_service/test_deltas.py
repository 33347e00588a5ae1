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
from tests.cloud_service.conftest import enroll


def _onnx(path: Path, weights: np.ndarray) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(weights, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weights.shape[1]])],
        initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def pair(settings: Settings, tiny_model: dict, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[int, int, bytes]:
    tmp = tmp_path_factory.mktemp("delta")
    w1 = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    w2 = w1.copy()
    w2[:8] += 0.5  # a small change: most chunks are shared
    store = ArtifactStore(settings.artifact_dir)
    ids = []
    for number, w in ((201, w1), (202, w2)):
        digest, size = store.ingest_file(_onnx(tmp / f"v{number}.onnx", w))
        with session_scope(settings.database_url) as s:
            row = ModelVersion(model_id=tiny_model["id"], number=number, profile="x86-avx2",
                               onnx_hash=digest, onnx_size=size, report_hash=digest,
                               summary={}, constraints_met=True)
            s.add(row)
            s.flush()
            ids.append(row.id)
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
    assert len(r.content) < int(r.headers["X-HADMC-Full-Zstd-Bytes"])
    (tmp_path / "d.delta").write_bytes(r.content)
    out = tmp_path / "new" / "model.onnx"
    out.parent.mkdir()
    m = apply_delta(old, tmp_path / "d.delta", out, public_key=public)
    assert out.read_bytes() == v2_bytes and m.version == 202
    signed = SignedManifest.from_bytes(
        client.get(f"/v1/versions/{v2}/manifest", headers=me).content)
    signed.verify(public)
    assert signed.manifest.version == 202


def test_delta_errors(client: TestClient, auth: dict, pair: tuple) -> None:
    v1, v2, _ = pair
    assert client.get(f"/v1/versions/{v2}/delta", params={"from": v2},
                      headers=auth).status_code == 422
    assert client.get(f"/v1/versions/{v2}/delta", params={"from": 999999},
                      headers=auth).status_code == 404
    assert client.get(f"/v1/versions/{v2}/delta", headers=auth).status_code == 422
