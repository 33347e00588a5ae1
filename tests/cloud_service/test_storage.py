from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import blake3
import pytest

from cloud_service.errors import PayloadTooLargeError
from cloud_service.storage import ArtifactStore


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_stream_is_content_addressed_and_read_only(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = b"weights" * 5000
    digest, size = asyncio.run(store.ingest_stream(_chunks(data), 10**6))
    assert digest == blake3.blake3(data).hexdigest()
    assert size == len(data)
    path = store.path(digest)
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o222 == 0
    assert list((tmp_path / "tmp").iterdir()) == []


def test_over_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(store.ingest_stream(_chunks(b"x" * 5000), 4096))
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list((tmp_path / "objects").iterdir()) == []


def test_concurrent_uploads_of_same_content_stored_once(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    data = bytes(range(256)) * 4000
    results: list[tuple[str, int]] = []

    def upload() -> None:
        results.append(asyncio.run(store.ingest_stream(_chunks(data, 4096), 10**7)))

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({d for d, _ in results}) == 1
    objects = [p for p in (tmp_path / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1
    assert objects[0].read_bytes() == data
    assert list((tmp_path / "tmp").iterdir()) == []


def test_ingest_file_and_bad_digest(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "f.bin"
    src.write_bytes(b"abc")
    digest, size = store.ingest_file(src)
    assert (digest, size) == (blake3.blake3(b"abc").hexdigest(), 3)
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


def test_relative_root_hands_out_working_paths(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = ArtifactStore(Path("artifacts"))
    digest, _ = store.put_bytes(b"model")
    (tmp_path / "job").mkdir()
    assert store.link_as(digest, Path("job"), "model.onnx").read_bytes() == b"model"
    monkeypatch.chdir(tmp_path / "job")
    assert store.path(digest).read_bytes() == b"model"
