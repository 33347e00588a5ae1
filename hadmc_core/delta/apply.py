"""Apply a delta: streaming, bounded memory, every hash checked, atomic output."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO

import blake3
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hadmc_core.delta import codec
from hadmc_core.delta.errors import (
    BaseMismatchError,
    ChunkMismatchError,
    FormatError,
    TruncatedDeltaError,
)
from hadmc_core.delta.keys import SignedManifest
from hadmc_core.delta.manifest import MAX_MANIFEST_BYTES, Manifest, hash_file

MAX_BLOB_SLACK = 1024  # zstd framing over a chunk's own size


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TruncatedDeltaError(f"delta ends inside {what} (wanted {n} bytes, got "
                                  f"{len(data)}); download it again")
    return data


def read_header(f: BinaryIO) -> tuple[SignedManifest, dict]:
    if _read_exact(f, len(codec.MAGIC), "the magic") != codec.MAGIC:
        raise FormatError("not a HAD-MC delta (bad magic)")
    (n,) = struct.unpack("<I", _read_exact(f, 4, "the header length"))
    if n > MAX_MANIFEST_BYTES:
        raise FormatError("delta header larger than the 64 MiB cap")
    try:
        head = json.loads(_read_exact(f, n, "the header"))
        target = SignedManifest(Manifest.from_dict(head["target"]["manifest"]),
                                str(head["target"].get("signature", "")),
                                str(head["target"].get("key_id", "")))
        base = {"blake3": str(head["base"]["blake3"]), "size": int(head["base"]["size"])}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise FormatError(f"delta header is malformed: {e}") from e
    return target, base


def _chunks(m: Manifest):
    for seg in m.files[0].segments:
        for i, h, start, n in seg.chunk_bounds(m.chunk_size):
            yield f"{seg.name or '<bytes>'}#{i}", h, start, n


def _decompress(blob: bytes, n: int, label: str) -> bytes:
    try:
        out = zstandard.ZstdDecompressor().decompress(blob, max_output_size=n)
    except zstandard.ZstdError as e:
        raise ChunkMismatchError(f"chunk {label}: payload does not decompress ({e})") from e
    if len(out) != n:
        raise ChunkMismatchError(f"chunk {label}: payload decodes to {len(out)} bytes, "
                                 f"expected {n}")
    return out


def _rebuild(kind: int, blob: bytes, base_bytes: bytes | None, n: int, dtype: str,
             label: str) -> bytes:
    size = codec.ITEMSIZE.get(dtype, 1)
    if kind == codec.RAW:
        return _decompress(blob, n, label)
    if kind == codec.RAWP:
        return codec.unplanes(_decompress(blob, n, label), size, n)
    assert base_bytes is not None
    if kind == codec.XOR:
        return codec.xor(codec.unplanes(_decompress(blob, n, label), size, n), base_bytes)
    return codec.add(_decompress(blob, n, label), base_bytes)


def _dtypes(m: Manifest) -> list[str]:
    return [seg.dtype for seg in m.files[0].segments
            for _ in range(len(seg.chunks))]


def apply_delta(old_path: Path, delta_path: Path, out_path: Path,
                public_key: Ed25519PublicKey | None = None, min_version: int | None = None,
                now: float | None = None) -> Manifest:
    """Rebuild the target file at ``out_path``; raise a DeltaError and leave it untouched
    on any mismatch. Returns the verified target manifest."""
    old_path, out_path = Path(old_path), Path(out_path)
    with Path(delta_path).open("rb") as f:
        target, base = read_header(f)
        if public_key is not None:
            target.verify(public_key)
        m = target.manifest
        m.check_fresh(now, min_version)
        if len(m.files) != 1:
            raise FormatError("a delta rebuilds exactly one file")
        _check_base(old_path, base)
        count = sum(len(s.chunks) for s in m.files[0].segments)
        table = _read_exact(f, codec.OP.size, "the op table")
        first = codec.OP.unpack(table)
        if first[0] == codec.FULL:
            ops = [first]
        else:
            table += _read_exact(f, codec.OP.size * (count - 1), "the op table") if count else b""
            ops = [codec.OP.unpack_from(table, i * codec.OP.size) for i in range(count)]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
        try:
            with os.fdopen(fd, "wb") as out, old_path.open("rb") as old:
                if ops[0][0] == codec.FULL:
                    _write_full(f, ops[0][2], m, out)
                else:
                    _write_ops(f, ops, m, old, out)
                out.flush()
                os.fsync(out.fileno())
            if f.read(1):
                raise FormatError("delta has trailing bytes after its payload")
            got = hash_file(Path(tmp)) if m.files[0].size else blake3.blake3(b"").hexdigest()
            if got != m.files[0].blake3:
                raise ChunkMismatchError(f"rebuilt file hash {got[:16]} differs from the "
                                         f"manifest's {m.files[0].blake3[:16]}")
            os.replace(tmp, out_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return m


def _check_base(old_path: Path, base: dict) -> None:
    if not old_path.is_file():
        raise BaseMismatchError(f"base file {old_path} not found")
    size = old_path.stat().st_size
    if size != base["size"] or (hash_file(old_path) if size else
                                blake3.blake3(b"").hexdigest()) != base["blake3"]:
        raise BaseMismatchError(
            f"{old_path} is not the version this delta was made against (expected BLAKE3 "
            f"{base['blake3'][:16]}, {base['size']} bytes); fetch the full file instead")


def _write_ops(f: BinaryIO, ops: list, m: Manifest, old: BinaryIO, out: BinaryIO) -> None:
    for (label, h, _start, n), (kind, off, length), dtype in zip(_chunks(m), ops, _dtypes(m),
                                                                strict=True):
        if kind not in codec.KIND_NAMES or kind == codec.FULL:
            raise FormatError(f"chunk {label}: unknown op kind {kind}")
        if length > n + MAX_BLOB_SLACK + n // 8:
            raise FormatError(f"chunk {label}: payload of {length} bytes is over its cap")
        blob = _read_exact(f, length, f"the payload of chunk {label}")
        base_bytes = None
        if kind in (codec.REF, codec.XOR, codec.ADD):
            old.seek(off)
            base_bytes = old.read(n)
            if len(base_bytes) != n:
                raise FormatError(f"chunk {label}: base offset {off} is past the base file")
        data = base_bytes if kind == codec.REF else _rebuild(kind, blob, base_bytes, n,
                                                               dtype, label)
        assert data is not None
        if blake3.blake3(data).hexdigest() != h:
            raise ChunkMismatchError(f"chunk {label}: hash mismatch after "
                                     f"{codec.KIND_NAMES[kind]} decoding; the delta or the "
                                     "base is corrupt")
        out.write(data)


def _write_full(f: BinaryIO, length: int, m: Manifest, out: BinaryIO) -> None:
    reader = zstandard.ZstdDecompressor().stream_reader(_Limited(f, length))
    try:
        for label, h, _start, n in _chunks(m):
            data = reader.read(n)
            while len(data) < n:
                more = reader.read(n - len(data))
                if not more:
                    raise TruncatedDeltaError(f"full payload ends before chunk {label}")
                data += more
            if blake3.blake3(data).hexdigest() != h:
                raise ChunkMismatchError(f"chunk {label}: hash mismatch in the full payload")
            out.write(data)
    except zstandard.ZstdError as e:
        raise ChunkMismatchError(f"full payload does not decompress: {e}") from e


class _Limited:
    """A reader that stops after ``n`` bytes (and says when the delta ended early)."""

    def __init__(self, f: BinaryIO, n: int) -> None:
        self.f, self.left = f, n

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size < 0 else min(size, self.left)
        data = self.f.read(size)
        if not data:
            raise TruncatedDeltaError("delta ends inside its full payload")
        self.left -= len(data)
        return data
