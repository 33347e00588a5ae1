from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.cloud_service.conftest import upload_model

OCTET = {"Content-Type": "application/octet-stream"}


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def external_data_onnx(directory: Path, location: str) -> Path:
    """A valid small conv net whose weight lives in an external file at ``location``; the
    file beside the model really exists (so only the upload's rule refuses it)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((4, 1, 3, 3), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(model.SerializeToString())
    return path


def test_upload_safetensors_then_get_and_list(client: TestClient, auth: dict,
                                              tiny_weights: Path) -> None:
    body = upload_model(client, auth, tiny_weights, name="mine")
    assert body["format"] == "safetensors"
    assert body["arch"] == {"arch": "densenet", "in_channels": 1, "num_classes": 10,
                            "stem": "small", "width": 0.5}
    assert body["size_bytes"] == tiny_weights.stat().st_size
    got = client.get(f"/v1/models/{body['id']}", headers=auth).json()
    assert got == body
    page = client.get("/v1/models", params={"limit": 1}, headers=auth).json()
    assert len(page["data"]) == 1 and page["count"] >= 1


def test_architecture_from_file_metadata(client: TestClient, auth: dict,
                                         tiny_weights: Path) -> None:
    r = client.post("/v1/models", params={"name": "meta"}, content=tiny_weights.read_bytes(),
                    headers={**auth, **OCTET})
    assert r.status_code == 201, r.text
    assert r.json()["arch"]["arch"] == "densenet"


def test_upload_onnx(client: TestClient, auth: dict, tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "m.onnx")
    r = client.post("/v1/models", params={"name": "relu", "format": "onnx"},
                    content=path.read_bytes(), headers={**auth, **OCTET})
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "onnx" and r.json()["details"]["nodes"] == 1


def _problem(r, status: int) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    return r.json()


@pytest.mark.parametrize("fmt,payload", [
    ("safetensors", pickle.dumps({"weight": [1.0, 2.0]})),
    ("safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"),
    ("onnx", pickle.dumps({"weight": [1.0, 2.0]})),
    ("onnx", b"\x08\x07garbage-protobuf"),
], ids=["pickle-as-safetensors", "broken-header", "pickle-as-onnx", "garbage-onnx"])
def test_bad_files_are_422(client: TestClient, auth: dict, fmt: str, payload: bytes) -> None:
    r = client.post("/v1/models", params={"name": "bad", "format": fmt, "arch": "densenet"},
                    content=payload, headers={**auth, **OCTET})
    assert "not" in _problem(r, 422)["detail"]


def test_weights_that_do_not_fit_the_architecture(client: TestClient, auth: dict,
                                                  tiny_weights: Path) -> None:
    r = client.post("/v1/models", params={"name": "x", "arch": "resnet18"},
                    content=tiny_weights.read_bytes(), headers={**auth, **OCTET})
    assert "do not fit" in _problem(r, 422)["detail"]


def test_unknown_architecture(client: TestClient, auth: dict, tiny_weights: Path) -> None:
    r = client.post("/v1/models", params={"name": "x", "arch": "vgg"},
                    content=tiny_weights.read_bytes(), headers={**auth, **OCTET})
    assert "unknown architecture" in _problem(r, 422)["detail"]


def test_wrong_content_type_is_415(client: TestClient, auth: dict) -> None:
    r = client.post("/v1/models", params={"name": "x"}, files={"f": ("a.bin", b"123")},
                    headers=auth)
    _problem(r, 415)


def test_oversized_upload_is_413(client: TestClient, auth: dict, settings) -> None:  # type: ignore[no-untyped-def]
    big = b"\0" * (settings.max_upload_bytes + 1)
    r = client.post("/v1/models", params={"name": "big"}, content=big,
                    headers={**auth, **OCTET})
    _problem(r, 413)

    def chunked():  # no Content-Length: the stream is cut at the limit
        for _ in range(settings.max_upload_bytes // 2**20 + 2):
            yield b"\0" * 2**20

    r = client.post("/v1/models", params={"name": "big"}, content=chunked(),
                    headers={**auth, **OCTET})
    _problem(r, 413)


def test_unknown_model_is_404(client: TestClient, auth: dict) -> None:
    _problem(client.get("/v1/models/999999", headers=auth), 404)


def test_bad_query_is_422(client: TestClient, auth: dict) -> None:
    _problem(client.get("/v1/models", params={"limit": "many"}, headers=auth), 422)


@pytest.mark.parametrize("location", ["../../../../etc/passwd", "/etc/passwd", "w.bin",
                                      "C:\\weights\\w.bin", "OTHER-ARTIFACT"],
                         ids=["parent", "absolute", "beside", "windows-drive", "an-artifact"])
def test_onnx_with_external_data_is_refused_wherever_it_points(
        client: TestClient, auth: dict, tmp_path: Path, tiny_weights: Path,
        location: str) -> None:
    if location == "OTHER-ARTIFACT":  # another upload's object, a sibling in the store
        digest = upload_model(client, auth, tiny_weights)["artifact_hash"]
        location = f"../{digest[:2]}/{digest}"
    path = external_data_onnx(tmp_path, location)
    before = client.get("/v1/models", params={"limit": 1}, headers=auth).json()["count"]
    r = client.post("/v1/models", params={"name": "ext", "format": "onnx"},
                    content=path.read_bytes(), headers={**auth, **OCTET})
    detail = _problem(r, 422)["detail"]
    assert "tensor 'w' keeps its data in an external file" in detail
    assert "single-file ONNX model" in detail
    assert client.get("/v1/models", params={"limit": 1}, headers=auth).json()["count"] == before


def test_publishing_an_onnx_version_with_external_data_is_refused(
        client: TestClient, auth: dict, tiny_model: dict, tmp_path: Path) -> None:
    path = external_data_onnx(tmp_path, "w.bin")
    r = client.post(f"/v1/models/{tiny_model['id']}/versions", params={"profile": "x86-avx2"},
                    content=path.read_bytes(), headers={**auth, **OCTET})
    assert "external file" in _problem(r, 422)["detail"]
