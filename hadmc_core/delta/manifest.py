"""Manifests: per-tensor chunk hashes of a model artifact, canonical and signed.

A manifest lists each file of an artifact (the model file first, then e.g. ONNX external
data files), the file's segments (tensors and the bytes between them, in file order) and,
for every segment, the BLAKE3 hash of each fixed-size chunk. A root hash covers everything.
Serialization is canonical JSON (sorted keys, no spaces), so the same manifest always gives
the same bytes; the Ed25519 signature is over those bytes. ``build_manifest`` lives in
``hadmc_core.delta.build``.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3

from hadmc_core.delta.errors import ExpiredError, FormatError, RollbackError, SignatureError
from hadmc_core.delta.formats import FORMATS, ITEMSIZE
from hadmc_core.delta.onnxwire import safe_location

FORMAT = "hadmc.manifest/1"
DEFAULT_CHUNK = 64 * 1024
# Hard caps: a hostile manifest cannot make a device allocate without bound.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_FILES = 64
MAX_FILE_SIZE = 16 * 1024**3
MAX_CHUNKS = 1 << 20
MIN_CHUNK, MAX_CHUNK = 4 * 1024, 16 * 1024 * 1024
MAX_DIMS = 16
_HEX = re.compile(r"[0-9a-f]{64}\Z")
DTYPES = set(ITEMSIZE) | {"bytes"}


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def hash_bytes(data: bytes | memoryview) -> str:
    return blake3.blake3(data).hexdigest()


class FileHasher:
    """A file's hash: BLAKE3 over its size and its chunks' BLAKE3 digests in order (a
    two-level hash tree), so a file is read and hashed once for both levels."""

    def __init__(self) -> None:
        self._h = blake3.blake3()
        self.size = 0

    def update(self, chunk_digest: bytes, length: int) -> None:
        self._h.update(chunk_digest)
        self.size += length

    def hexdigest(self) -> str:
        h = self._h.copy()
        h.update(self.size.to_bytes(8, "little"))
        return h.hexdigest()


def loads(data: bytes | str, what: str) -> Any:
    """``json.loads`` whose every failure is a FormatError (deep nesting included)."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FormatError(f"{what} is not valid JSON: {str(e)[:200]}") from e


@dataclass
class SegmentEntry:
    name: str            # tensor name; "" for bytes between tensors (headers, graph)
    offset: int
    length: int
    dtype: str
    shape: list[int]
    chunks: list[str]

    def chunk_bounds(self, chunk_size: int) -> Iterator[tuple[int, str, int, int]]:
        """(index, hash, file offset, length) of each chunk."""
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

    def normalized(self) -> bytes:
        """Canonical bytes without version, times, name or root: what a device recomputes
        from its files alone (the zstd dictionary of a delta's header)."""
        body = self.body()
        body.update(model="", version=0, created=0, expires=0, extra={})
        return canonical(body)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def n_chunks(self) -> int:
        return sum(len(s.chunks) for f in self.files for s in f.segments)

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
            m = _parse(d)
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise FormatError(f"manifest is malformed ({type(e).__name__}: "
                              f"{str(e)[:200]})") from e
        validate(m)
        if m.compute_root() != m.root:
            raise SignatureError("manifest root hash does not match its content; the "
                                 "manifest was altered: fetch it again")
        return m

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_BYTES:
            raise FormatError(f"manifest larger than the {MAX_MANIFEST_BYTES >> 20} MiB cap")
        return cls.from_dict(loads(data, "manifest"))


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise FormatError(f"manifest {what} must be an integer in [{lo}, {hi}], got {v!r:.40}")
    return v


def _str(v: Any, what: str, limit: int = 4096) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise FormatError(f"manifest {what} must be a string of at most {limit} characters")
    return v


def _chunk_size(v: Any) -> int:
    n = _int(v, "chunk_size", MIN_CHUNK, MAX_CHUNK)
    if n % 8:
        raise FormatError("manifest chunk_size must be a multiple of 8 bytes")
    return n


def _parse(d: Any) -> Manifest:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise FormatError(f"not a {FORMAT} manifest")
    files = d["files"]
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise FormatError(f"manifest must list 1..{MAX_FILES} files")
    total, entries = 0, []
    for f in files:
        segs = []
        for s in f["segments"]:
            chunks = s["chunks"]
            total += len(chunks)
            if total > MAX_CHUNKS:
                raise FormatError(f"manifest lists more than {MAX_CHUNKS} chunks (the cap)")
            if not all(isinstance(c, str) and _HEX.match(c) for c in chunks):
                raise FormatError("manifest chunk hashes must be 64 lowercase hex digits")
            shape = s["shape"]
            if not isinstance(shape, list) or len(shape) > MAX_DIMS:
                raise FormatError(f"manifest shape must be a list of at most {MAX_DIMS} dims")
            segs.append(SegmentEntry(_str(s["name"], "tensor name"),
                                     _int(s["offset"], "offset", 0, MAX_FILE_SIZE),
                                     _int(s["length"], "length", 0, MAX_FILE_SIZE),
                                     _str(s["dtype"], "dtype", 16),
                                     [_int(x, "dim", 0, MAX_FILE_SIZE) for x in shape],
                                     list(chunks)))
        entries.append(FileEntry(_str(f["path"], "path", 255), _str(f["format"], "format"),
                                 _int(f["size"], "file size", 0, MAX_FILE_SIZE),
                                 _str(f["blake3"], "file hash"), segs))
    extra = d.get("extra") or {}
    if not isinstance(extra, dict):
        raise FormatError("manifest extra must be an object")
    return Manifest(_str(d["model"], "model"), _int(d["version"], "version", 0, 2**63 - 1),
                    _int(d["created"], "created", 0, 2**63 - 1),
                    _int(d["expires"], "expires", 0, 2**63 - 1),
                    _chunk_size(d["chunk_size"]), entries,
                    _str(d["root"], "root"), extra)


def validate(m: Manifest) -> None:
    """Paths, formats, dtypes and hashes are sane; segments tile each file exactly."""
    seen: set[str] = set()
    for i, f in enumerate(m.files):
        if i == 0 and ("/" in f.path or f.path in ("", ".", "..")):
            raise FormatError(f"manifest main file name {f.path!r} must be a plain file name")
        if i > 0:
            safe_location(f.path)
        if f.path in seen:
            raise FormatError(f"manifest lists {f.path!r} twice")
        seen.add(f.path)
        if f.format not in FORMATS or not _HEX.match(f.blake3):
            raise FormatError(f"{f.path}: unknown format {f.format!r} or bad file hash")
        pos = 0
        for s in f.segments:
            if s.offset != pos or s.length == 0:
                raise FormatError(f"{f.path}: segment {s.name!r} does not follow the previous")
            if s.dtype not in DTYPES:
                raise FormatError(f"{f.path}: tensor {s.name!r} has unknown dtype {s.dtype!r}")
            if s.dtype != "bytes":
                count = 1
                for d in s.shape:
                    count *= d
                if count * ITEMSIZE[s.dtype] != s.length:
                    raise FormatError(f"{f.path}: tensor {s.name!r} shape {s.shape} does not "
                                      f"match its {s.length} bytes")
            expected = -(-s.length // m.chunk_size)
            if len(s.chunks) != expected:
                raise FormatError(f"{f.path}: segment {s.name!r} lists {len(s.chunks)} chunks, "
                                  f"expected {expected}")
            pos += s.length
        if pos != f.size:
            raise FormatError(f"{f.path}: segments cover {pos} bytes of {f.size}")


def chunks(m: Manifest) -> Iterator[tuple[int, SegmentEntry, int, str, int, int]]:
    """Every chunk in order: (file index, segment, chunk index, hash, offset, length)."""
    for fi, f in enumerate(m.files):
        for seg in f.segments:
            for i, h, start, n in seg.chunk_bounds(m.chunk_size):
                yield fi, seg, i, h, start, n


def label(m: Manifest, fi: int, seg: SegmentEntry, i: int) -> str:
    """How errors name a chunk: ``[file:]tensor#index``, ``<bytes@offset>#index``."""
    name = seg.name or f"<bytes@{seg.offset}>"
    return f"{m.files[fi].path + ':' if fi else ''}{name}#{i}"
