"""Manifests: per-tensor chunk hashes of a model artifact, canonical and signed.

A manifest lists each file of an artifact, the file's segments (tensors and the bytes
between them, in file order) and, for every segment, the BLAKE3 hash of each fixed-size
chunk. A root hash covers everything. Serialization is canonical JSON (sorted keys, no
spaces), so the same manifest always gives the same bytes; the Ed25519 signature is over
those bytes.
"""

from __future__ import annotations

import json
import mmap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from hadmc_core.delta import formats
from hadmc_core.delta.errors import ExpiredError, FormatError, RollbackError, SignatureError

FORMAT = "hadmc.manifest/1"
DEFAULT_CHUNK = 64 * 1024
# Hard caps: a hostile manifest cannot make a device allocate without bound.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_FILES = 64
MAX_FILE_SIZE = 16 * 1024**3
MAX_CHUNKS = 4_000_000


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def hash_bytes(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


def hash_file(path: Path) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(str(path))
    return h.hexdigest()


@dataclass
class SegmentEntry:
    name: str
    offset: int
    length: int
    dtype: str
    shape: list[int]
    chunks: list[str]

    def chunk_bounds(self, chunk_size: int):
        for i, h in enumerate(self.chunks):
            start = self.offset + i * chunk_size
            yield i, h, start, min(chunk_size, self.offset + self.length - start)


@dataclass
class FileEntry:
    path: str
    format: str
    size: int
    blake3: str
    segments: list[SegmentEntry]


@dataclass
class Manifest:
    model: str
    version: int
    created: int
    expires: int
    chunk_size: int
    files: list[FileEntry]
    root: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": self.model, "version": self.version,
            "created": self.created, "expires": self.expires, "chunk_size": self.chunk_size,
            "extra": self.extra,
            "files": [{"path": f.path, "format": f.format, "size": f.size, "blake3": f.blake3,
                       "segments": [{"name": s.name, "offset": s.offset, "length": s.length,
                                     "dtype": s.dtype, "shape": s.shape, "chunks": s.chunks}
                                    for s in f.segments]} for f in self.files],
        }

    def compute_root(self) -> str:
        return hash_bytes(canonical(self.body()))

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "root": self.root}

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict())

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise FormatError(f"manifest has no file {path!r}")

    def check_fresh(self, now: float | None = None, min_version: int | None = None) -> None:
        now = time.time() if now is None else now
        if self.expires and now > self.expires:
            raise ExpiredError(f"manifest for {self.model} v{self.version} expired at "
                               f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.expires))}"
                               "; ask the server for a fresh one")
        if min_version is not None and self.version < min_version:
            raise RollbackError(f"manifest version {self.version} is lower than the highest "
                                f"accepted ({min_version}); refusing a rollback without a "
                                "signed rollback order")

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        try:
            if d.get("format") != FORMAT:
                raise FormatError(f"not a {FORMAT} manifest")
            files = d["files"]
            if not isinstance(files, list) or len(files) > MAX_FILES:
                raise FormatError(f"manifest must list 1..{MAX_FILES} files")
            total = 0
            entries = []
            for f in files:
                size = int(f["size"])
                if not 0 <= size <= MAX_FILE_SIZE:
                    raise FormatError(f"file size {size} out of range")
                segs = []
                for s in f["segments"]:
                    chunks = [str(c) for c in s["chunks"]]
                    total += len(chunks)
                    segs.append(SegmentEntry(str(s["name"]), int(s["offset"]), int(s["length"]),
                                             str(s["dtype"]), [int(x) for x in s["shape"]],
                                             chunks))
                entries.append(FileEntry(str(f["path"]), str(f["format"]), size,
                                         str(f["blake3"]), segs))
            if total > MAX_CHUNKS:
                raise FormatError(f"manifest lists {total} chunks, over the cap {MAX_CHUNKS}")
            m = cls(str(d["model"]), int(d["version"]), int(d["created"]), int(d["expires"]),
                    int(d["chunk_size"]), entries, str(d["root"]), dict(d.get("extra") or {}))
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FormatError(f"manifest is malformed ({type(e).__name__}: {e})") from e
        if not 0 < m.chunk_size <= 64 * 1024 * 1024:
            raise FormatError("manifest chunk_size out of range")
        _check_layout(m)
        if m.compute_root() != m.root:
            raise SignatureError("manifest root hash does not match its content")
        return m

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise FormatError("manifest larger than the 64 MiB cap")
        try:
            return cls.from_dict(json.loads(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise FormatError(f"manifest is not JSON: {e}") from e


def _check_layout(m: Manifest) -> None:
    """Segments must tile each file exactly and chunk counts must fit their lengths."""
    for f in m.files:
        pos = 0
        for s in f.segments:
            if s.offset != pos or s.length < 0:
                raise FormatError(f"{f.path}: segment {s.name!r} does not follow the previous")
            expected = -(-s.length // m.chunk_size)
            if len(s.chunks) != expected:
                raise FormatError(f"{f.path}: segment {s.name!r} lists {len(s.chunks)} chunks, "
                                  f"expected {expected}")
            pos += s.length
        if pos != f.size:
            raise FormatError(f"{f.path}: segments cover {pos} bytes of {f.size}")


def _file_entry(path: Path, name: str, chunk_size: int) -> FileEntry:
    size = path.stat().st_size
    fmt = formats.detect_format(name, b"")
    with path.open("rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            view = memoryview(mm)
            try:
                segs = formats.segments(fmt, view)
            except FormatError:
                fmt, segs = "raw", formats.segments("raw", view)
            entries = []
            for s in segs:
                chunks = [hash_bytes(view[o:o + min(chunk_size, s.offset + s.length - o)])
                          for o in range(s.offset, s.offset + s.length, chunk_size)]
                entries.append(SegmentEntry(s.name, s.offset, s.length, s.dtype,
                                            list(s.shape), chunks))
            view.release()
        finally:
            if size:
                mm.close()
    return FileEntry(name, fmt, size, hash_file(path), entries)


def build_manifest(paths: list[Path] | Path, model: str = "", version: int = 1,
                   ttl_seconds: int = 30 * 24 * 3600, chunk_size: int = DEFAULT_CHUNK,
                   names: list[str] | None = None, now: int | None = None) -> Manifest:
    """Hash the files of an artifact into a manifest (not yet signed)."""
    paths = [paths] if isinstance(paths, Path | str) else list(paths)
    paths = [Path(p) for p in paths]
    names = names or [p.name for p in paths]
    created = int(time.time()) if now is None else now
    files = [_file_entry(p, n, chunk_size) for p, n in zip(paths, names, strict=True)]
    m = Manifest(model or paths[0].stem, version, created,
                 created + ttl_seconds if ttl_seconds else 0, chunk_size, files)
    m.root = m.compute_root()
    return m
