"""Compute deltas: from the old and new files, or from the device's manifest alone."""

from __future__ import annotations

import logging
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from hadmc_core.delta import codec
from hadmc_core.delta.keys import SignedManifest
from hadmc_core.delta.manifest import Manifest, canonical

log = logging.getLogger(__name__)


@dataclass
class DeltaStats:
    target_bytes: int = 0
    delta_bytes: int = 0
    full_zstd_bytes: int = 0
    fallback: bool = False
    ops: dict[str, int] = field(default_factory=dict)
    op_bytes: dict[str, int] = field(default_factory=dict)


def _base_index(base: Manifest) -> tuple[dict[str, int], dict[str, tuple]]:
    """Chunk hash -> offset in the base file; tensor name -> (segment) of the base."""
    f = base.files[0]
    by_hash: dict[str, int] = {}
    tensors: dict[str, tuple] = {}
    for seg in f.segments:
        for _i, h, start, _n in seg.chunk_bounds(base.chunk_size):
            by_hash.setdefault(h, start)
        if seg.name:
            tensors[seg.name] = (seg.offset, seg.length, seg.dtype, tuple(seg.shape))
    return by_hash, tensors


def _choose(chunk: bytes, dtype: str, old: bytes | None, level: int
            ) -> tuple[int, bytes]:
    c = zstandard.ZstdCompressor(level=level)
    best = (codec.RAW, c.compress(chunk))
    size = codec.ITEMSIZE.get(dtype, 1)
    if size > 1:
        cand = c.compress(codec.planes(chunk, size))
        if len(cand) < len(best[1]):
            best = (codec.RAWP, cand)
    if old is not None and len(old) == len(chunk):
        if dtype in codec.FLOATS or size > 1:
            cand = c.compress(codec.planes(codec.xor(chunk, old), size))
            kind = codec.XOR
        else:
            cand = c.compress(codec.sub(chunk, old))
            kind = codec.ADD
        if len(cand) < len(best[1]):
            best = (kind, cand)
    return best


def encode(target: SignedManifest, new_path: Path, base: Manifest,
           old_path: Path | None = None, level: int = 3) -> tuple[bytes, DeltaStats]:
    """Delta turning the base file into the target's (first) file.

    With ``old_path`` the old bytes are used for XOR/ADD encodings against the tensor of
    the same name and shape; without it (device manifest only) chunks the device lacks
    are sent compressed and the rest are references.
    """
    tm, tf = target.manifest, target.manifest.files[0]
    by_hash, base_tensors = _base_index(base)
    stats = DeltaStats(target_bytes=tf.size)
    ops, payload = bytearray(), bytearray()
    with new_path.open("rb") as fn, _maybe_map(old_path) as old:
        new = mmap.mmap(fn.fileno(), 0, access=mmap.ACCESS_READ) if tf.size else b""
        try:
            for seg in tf.segments:
                bt = base_tensors.get(seg.name) if seg.name else None
                same = bt is not None and bt[2] == seg.dtype and bt[3] == tuple(seg.shape)
                for _i, h, start, n in seg.chunk_bounds(tm.chunk_size):
                    if h in by_hash:
                        kind, blob, off = codec.REF, b"", by_hash[h]
                    else:
                        chunk = bytes(new[start:start + n])
                        off = bt[0] + (start - seg.offset) if same else 0
                        ref = bytes(old[off:off + n]) if (same and old is not None) else None
                        kind, blob = _choose(chunk, seg.dtype, ref, level)
                    ops += codec.OP.pack(kind, off, len(blob))
                    payload += blob
                    name = codec.KIND_NAMES[kind]
                    stats.ops[name] = stats.ops.get(name, 0) + 1
                    stats.op_bytes[name] = stats.op_bytes.get(name, 0) + len(blob)
            full = zstandard.ZstdCompressor(level=max(level, 3)).compress(bytes(new))
        finally:
            if tf.size:
                new.close()
    header = {"target": _signed_dict(target), "base": {"blake3": base.files[0].blake3,
                                                        "size": base.files[0].size}}
    stats.full_zstd_bytes = len(full)
    if len(ops) + len(payload) > len(full):
        stats.fallback = True
        log.info("delta larger than the full compressed file; sending the file instead")
        ops, payload = bytearray(codec.OP.pack(codec.FULL, 0, len(full))), bytearray(full)
        stats.ops, stats.op_bytes = {"full": 1}, {"full": len(full)}
    head = canonical(header)
    out = codec.MAGIC + struct.pack("<I", len(head)) + head + bytes(ops) + bytes(payload)
    stats.delta_bytes = len(out)
    return out, stats


def _signed_dict(s: SignedManifest) -> dict:
    return {"manifest": s.manifest.to_dict(), "signature": s.signature, "key_id": s.key_id}


class _maybe_map:
    def __init__(self, path: Path | None) -> None:
        self.path, self.fh, self.mm = path, None, None

    def __enter__(self):
        if self.path is None:
            return None
        self.fh = Path(self.path).open("rb")
        if Path(self.path).stat().st_size == 0:
            return b""
        self.mm = mmap.mmap(self.fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self.mm

    def __exit__(self, *exc: object) -> None:
        if self.mm is not None:
            self.mm.close()
        if self.fh is not None:
            self.fh.close()
