"""COCO and YOLO folders uploaded as a .zip: valid ones are accepted and summarized; hostile
archives (zip-slip, symlinks, zip bombs, lying headers) and broken folders are refused with a
problem that names the entry, before anything is written outside a temporary folder."""

from __future__ import annotations

import io
import json
import stat
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.errors import InvalidInputError, PayloadTooLargeError
from cloud_service.services import archives
from cloud_service.settings import Settings

OCTET = {"Content-Type": "application/octet-stream"}


def png(seed: int, size: int = 32) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def coco_members(prefix: str = "", n: int = 10) -> dict[str, bytes]:
    doc = {"images": [{"id": i, "file_name": f"img{i}.png", "width": 32, "height": 32}
                      for i in range(n)],
           "annotations": [{"id": i, "image_id": i, "category_id": 1 + i % 2,
                            "bbox": [4, 4, 10, 12], "area": 120, "iscrowd": 0}
                           for i in range(n)],
           "categories": [{"id": 1, "name": "shirt"}, {"id": 2, "name": "boot"}]}
    return {f"{prefix}annotations.json": json.dumps(doc).encode(),
            **{f"{prefix}images/img{i}.png": png(i) for i in range(n)}}


def big_png() -> bytes:
    """A few kB of PNG whose header declares 10000 x 10000 pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buf, "PNG")
    return buf.getvalue()


def yolo_members(n: int = 10) -> dict[str, bytes]:
    out = {"data.yaml": b"names: [shirt, boot]\n"}
    for i in range(n):
        out[f"images/img{i}.png"] = png(i)
        out[f"labels/img{i}.txt"] = f"{i % 2} 0.5 0.5 0.25 0.3\n".encode()
    return out


def make_zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def with_entry(members: dict[str, bytes], info: zipfile.ZipInfo, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, d in members.items():
            z.writestr(name, d)
        z.writestr(info, data)
    return buf.getvalue()


def symlink_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def patched(members: dict[str, bytes], name: str, local: tuple[int, str, int],
            central: tuple[int, str, int]) -> bytes:
    """The archive with a field of ``name``'s local header and central directory entry
    overwritten: (offset, struct format, value) each."""
    data = bytearray(make_zip(members))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo(name)
    struct.pack_into(local[1], data, info.header_offset + local[0], local[2])
    cd = data.find(b"PK\x01\x02")
    while cd != -1:
        nlen = struct.unpack_from("<H", data, cd + 28)[0]
        if bytes(data[cd + 46:cd + 46 + nlen]).decode() == name:
            struct.pack_into(central[1], data, cd + central[0], central[2])
        cd = data.find(b"PK\x01\x02", cd + 4)
    return bytes(data)


def lying_size(members: dict[str, bytes], name: str, declared: int) -> bytes:
    """``name``'s inflated size declared as ``declared`` (its data inflates to more)."""
    return patched(members, name, (22, "<I", declared), (24, "<I", declared))


def encrypted(members: dict[str, bytes], name: str) -> bytes:
    """``name`` flagged as encrypted (general purpose bit 0)."""
    return patched(members, name, (6, "<H", 1), (8, "<H", 1))


def upload(client: TestClient, auth: dict, payload: bytes, kind: str) -> object:
    return client.post("/v1/datasets/upload", params={"name": f"det-{kind}", "kind": kind},
                       content=payload, headers={**auth, **OCTET})


def leftovers(settings: Settings) -> list[str]:
    return [p.name for p in (Path(settings.artifact_dir) / "tmp").iterdir()
            if p.name.startswith("dataset-")]


@pytest.mark.parametrize("kind,members", [
    ("coco", coco_members()),
    ("coco", coco_members(prefix="mydata/")),
    ("yolo", yolo_members()),
], ids=["coco", "coco-in-one-folder", "yolo"])
def test_detection_folder_is_accepted(client: TestClient, auth: dict, settings: Settings,
                                      kind: str, members: dict[str, bytes]) -> None:
    r = upload(client, auth, make_zip(members), kind)
    assert r.status_code == 201, r.text  # type: ignore[attr-defined]
    details = r.json()["details"]  # type: ignore[attr-defined]
    assert details["kind"] == kind and details["task"] == "detect"
    assert details["images"] == 10 and details["annotations"] == 10
    assert details["samples"] == {"train": 8, "validation": 1, "test": 1}
    assert details["validated_by"] == "hadmc_core.data.detection"
    assert details["max_image_side"] == 32
    assert details["classes"] == ["shirt", "boot"]
    got = client.get(f"/v1/datasets/{r.json()['id']}", headers=auth).json()  # type: ignore
    assert got["details"] == details
    assert leftovers(settings) == []


HOSTILE = {
    "dotdot": (make_zip({**coco_members(), "../evil.txt": b"x"}), 422, "'..' component"),
    "dotdot-inside": (make_zip({**coco_members(), "images/../../evil.txt": b"x"}), 422,
                      "'..' component"),
    "absolute": (make_zip({**coco_members(), "/tmp/evil.txt": b"x"}), 422, "absolute path"),
    "drive-letter": (make_zip({**coco_members(), "C:/evil.txt": b"x"}), 422, "absolute path"),
    "backslash": (make_zip({**coco_members(), "..\\evil.txt": b"x"}), 422, "backslash"),
    "control-char": (make_zip({**coco_members(), "images/a\nb.png": b"x"}), 422,
                     "control characters"),
    "symlink": (with_entry(coco_members(), symlink_entry("images/link.png"), b"/etc/passwd"),
                422, "symbolic link"),
    "encrypted": (encrypted(coco_members(), "images/img2.png"), 422, "encrypted"),
    "bzip2": (make_zip(coco_members(), zipfile.ZIP_BZIP2), 422, "compression method 12"),
    "file-then-dir": (make_zip({**coco_members(), "images": b"x"}), 422,
                      "a file where other entries need a directory"),
    "not-a-zip": (b"PK\x03\x04 no central directory here", 422, "not a readable .zip"),
    "coco-missing-image": (make_zip({k: v for k, v in coco_members().items()
                                     if not k.endswith("img1.png")}), 422,
                           "image 1 file images/img1.png does not exist"),
    "coco-no-annotations": (make_zip({"images/a.png": png(0)}), 422,
                            "annotations.json is missing"),
    "coco-bad-json": (make_zip({**coco_members(), "annotations.json": b"{nope"}), 422,
                      "annotations.json: not valid JSON"),
    "coco-file-name-outside": (make_zip({**coco_members(), "annotations.json": json.dumps(
        {"images": [{"id": 0, "file_name": "../../../../etc/passwd", "width": 9, "height": 9}],
         "categories": [], "annotations": []}).encode()}), 422,
        "file_name '../../../../etc/passwd' points outside the dataset folder"),
    "coco-width-not-a-number": (make_zip({**coco_members(), "annotations.json": json.dumps(
        {"images": [{"id": 0, "file_name": "img0.png", "width": "wide", "height": 32}],
         "categories": [{"id": 1, "name": "a"}], "annotations": [
             {"image_id": 0, "category_id": 1, "bbox": [0, 0, 2, 2]}]}).encode()}), 422,
        "coco dataset: cannot be read (ValueError"),
    "truncated-png": (make_zip({**coco_members(), "images/img4.png": png(4)[:120]}), 422,
                      "images/img4.png"),
    "not-an-image": (make_zip({**coco_members(), "images/img4.png": b"GIF89a nope"}), 422,
                     "images/img4.png: not a readable image"),
    "image-pixel-bomb": (make_zip({**coco_members(), "images/img4.png": big_png()}), 413,
                         "images/img4.png: 10000x10000 pixels"),
    "coco-unknown-category": (make_zip({**coco_members(), "annotations.json": json.dumps(
        {"images": [{"id": 0, "file_name": "img0.png", "width": 32, "height": 32}],
         "categories": [{"id": 1, "name": "a"}],
         "annotations": [{"image_id": 0, "category_id": 9, "bbox": [0, 0, 2, 2]}]}).encode()}),
        422, "category_id 9 is not in 'categories'"),
    "lying-size": (lying_size({**coco_members(), "images/big.bin": bytes(1 << 20)},
                              "images/big.bin", 1024), 422, "images/big.bin"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_coco_archive_is_refused(client: TestClient, auth: dict, settings: Settings,
                                         tmp_path: Path, name: str) -> None:
    payload, status, words = HOSTILE[name]
    before = {p.name for p in Path(settings.artifact_dir).parent.iterdir()}
    r = upload(client, auth, payload, "coco")
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    assert r.headers["content-type"].startswith("application/problem+json")  # type: ignore
    assert words in r.json()["detail"], r.json()["detail"]  # type: ignore[attr-defined]
    assert {p.name for p in Path(settings.artifact_dir).parent.iterdir()} == before
    assert not (Path(settings.artifact_dir) / "evil.txt").exists()
    assert leftovers(settings) == []


@pytest.mark.parametrize("members,words", [
    ({**yolo_members(), "labels/img0.txt": b"7 0.5 0.5 0.2 0.2\n"},
     "labels/img0.txt, line 1: class 7 out of range"),
    ({**yolo_members(), "labels/img1.txt": b"0 0.5 0.5 1.7 0.2\n"},
     "labels/img1.txt, line 1: box"),
    ({k: v for k, v in yolo_members().items() if k != "data.yaml"}, "expected data.yaml"),
    ({**yolo_members(), "data.yaml": b"nc: 2\n"}, "data.yaml: 'names' must list the class names"),
], ids=["unknown-class", "box-outside", "no-data-yaml", "no-names"])
def test_broken_yolo_folder_is_refused(client: TestClient, auth: dict, members: dict,
                                       words: str) -> None:
    r = upload(client, auth, make_zip(members), "yolo")
    assert r.status_code == 422, r.text  # type: ignore[attr-defined]
    assert words in r.json()["detail"], r.json()["detail"]  # type: ignore[attr-defined]


def zeros_entry(z: zipfile.ZipFile, name: str, mib: int) -> None:
    with z.open(name, "w", force_zip64=True) as f:
        zeros = bytes(1 << 20)
        for _ in range(mib):
            f.write(zeros)


def test_ratio_bomb_is_413(client: TestClient, auth: dict, settings: Settings) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in coco_members().items():
            z.writestr(k, v)
        zeros_entry(z, "images/bomb.png", 256)  # 256 MiB of zeros, about 250 kB deflated
    assert len(buf.getvalue()) < 1 << 20
    r = upload(client, auth, buf.getvalue(), "coco")
    assert r.status_code == 413, r.text  # type: ignore[attr-defined]
    assert "images/bomb.png" in r.json()["detail"]  # type: ignore[attr-defined]
    assert "zip bomb" in r.json()["detail"]  # type: ignore[attr-defined]
    assert leftovers(settings) == []


@pytest.mark.parametrize("limits,payload,setting", [
    ({"max_dataset_files": 4}, make_zip(coco_members(n=5)), "HADMC_MAX_DATASET_FILES"),
    ({"max_dataset_decompressed_mb": 0.01}, make_zip(coco_members(n=5)),
     "HADMC_MAX_DATASET_DECOMPRESSED_MB"),
], ids=["entries", "inflated-bytes"])
def test_archive_limits_are_settings(settings: Settings, auth: dict, limits: dict,
                                     payload: bytes, setting: str) -> None:
    from cloud_service.app import create_app

    with TestClient(create_app(settings.model_copy(update=limits))) as c:
        r = upload(c, auth, payload, "coco")
    assert r.status_code == 413, r.text  # type: ignore[attr-defined]
    assert setting in r.json()["detail"]  # type: ignore[attr-defined]


def test_extract_streams_with_bounded_memory(tmp_path: Path) -> None:
    """64 MiB inflated from one entry with a generous ratio limit: the unpacker holds one
    chunk at a time, never the entry."""
    src = tmp_path / "a.zip"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        zeros_entry(z, "data/images/big.bin", 64)
    out = tmp_path / "out"
    out.mkdir()
    tracemalloc.start()
    try:
        root = archives.extract(src, out, archives.Limits(max_bytes=80 << 20, max_files=10,
                                                          max_ratio=1e6))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert root == out.resolve() / "data"
    assert (root / "images" / "big.bin").stat().st_size == 64 << 20
    assert peak < 8 << 20, f"unpacking allocated {peak >> 20} MiB"


def test_plan_refuses_before_writing(tmp_path: Path) -> None:
    """A bad entry late in the archive stops it before the good ones are written."""
    src = tmp_path / "a.zip"
    src.write_bytes(make_zip({"images/ok.png": png(0), "a/../../evil": b"x"}))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidInputError, match="'a/../../evil'"):
        archives.extract(src, out, archives.Limits(max_bytes=1 << 20, max_files=10))
    assert list(out.iterdir()) == []
    over = tmp_path / "b.zip"
    over.write_bytes(make_zip({"a": bytes(600), "b": bytes(600)}, zipfile.ZIP_STORED))
    with pytest.raises(PayloadTooLargeError, match="'b' reaches 1200"):
        archives.extract(over, out, archives.Limits(max_bytes=1000, max_files=10))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("details,side", [
    ({"max_image_side": 32}, 64), ({"max_image_side": 100}, 128), ({"max_image_side": 128}, 128),
    ({"max_image_side": 5000}, 320), ({}, None),
], ids=["small", "rounded-up", "exact", "capped", "unknown"])
def test_detection_side_from_the_largest_image(details: dict, side: int | None) -> None:
    from cloud_service.services.datasets import detection_side

    assert detection_side(details) == side


def test_detection_side_of_a_fixed_onnx_input(tmp_path: Path) -> None:
    from cloud_service.services.datasets import detection_side
    from tests.edge_agent.detect_onnx import detector_onnx

    p = tmp_path / "m.onnx"
    p.write_bytes(detector_onnx(0, side=96))
    assert detection_side({"max_image_side": 32}, p) == 96
