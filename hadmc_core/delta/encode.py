"""Compute deltas: from the old and new files, or from the device's manifest alone."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard

from hadmc_core.delta import codec
from hadmc_core.delta.container import RELATIVE, BaseFile, Header
from hadmc_core.delta.formats import ITEMSIZE
from hadmc_core.delta.keys import SignedManifest
from hadmc_core.delta.manifest import Manifest, SegmentEntry, chunks
from hadmc_core.delta.reader import Files
from hadmc_core.delta.tensormap import TensorMap, find_map, gathered

log = logging.getLogger(__name__)
DICT_BACK = 256 * 1024  # DICT: base bytes this far before the chunk's position
SMALL = 1 << 20  # grouped bytes up to this total: zstd -19 and xz are tried as well


@dataclass
class DeltaStats:
    target_bytes: int = 0
    delta_bytes: int = 0
    full_zstd_bytes: int = 0
    fallback: bool = False
    encode_s: float = 0.0
    header_bytes: int = 0  # prefix, compressed manifest and maps, compressed op table
    ops: dict[str, int] = field(default_factory=dict)
    op_bytes: dict[str, int] = field(default_factory=dict)

    def count(self, kind: int, nbytes: int) -> None:
        k = codec.name(kind)
        self.ops[k] = self.ops.get(k, 0) + 1
        self.op_bytes[k] = self.op_bytes.get(k, 0) + nbytes


class _BaseIndex:
    """Where each chunk hash, tensor and between-tensor run sits in the concatenated base."""

    def __init__(self, base: Manifest) -> None:
        self.by_hash: dict[str, int] = {}
        self.tensors: dict[str, tuple[int, SegmentEntry]] = {}
        self.gaps: dict[int, list[tuple[int, int]]] = {}
        start = 0
        for fi, f in enumerate(base.files):
            for seg in f.segments:
                goff = start + seg.offset
                for _i, h, s, _n in seg.chunk_bounds(base.chunk_size):
                    self.by_hash.setdefault(h, start + s)
                if seg.name:
                    self.tensors.setdefault(seg.name, (goff, seg))
                else:
                    self.gaps.setdefault(fi, []).append((goff, seg.length))
            start += f.size


class _Encoder:
    def __init__(self, target: SignedManifest, base: Manifest, new: Files, old: Files | None,
                 level: int) -> None:
        self.m, self.base, self.new, self.old, self.level = target.manifest, base, new, old, level
        self.index = _BaseIndex(base)
        self.maps: list[tuple[int, str, TensorMap]] = []
        self.stats = DeltaStats(target_bytes=self.m.size)

    def _tensor_base(self, fi: int, seg: SegmentEntry) -> tuple[int, int | bytes] | None:
        """For a tensor with a same-name base: (-1, the base tensor's offset in the base) when
        the shape is unchanged, else (map index, the whole gathered base tensor)."""
        found = self.index.tensors.get(seg.name) if seg.name else None
        if found is None or self.old is None or seg.dtype == "bytes":
            return None
        goff, bseg = found
        if bseg.dtype != seg.dtype:
            return None
        if bseg.shape == seg.shape:
            return -1, goff
        dt = np.dtype(codec.UINT[ITEMSIZE[seg.dtype]])
        old = self.old.array(goff, bseg.length // dt.itemsize, dt).reshape(bseg.shape)
        new = self.new.array(self.new.start(fi) + seg.offset, seg.length // dt.itemsize, dt)
        axes = find_map(old, new.reshape(seg.shape))
        if axes is None:
            return None
        self.maps.append((fi, seg.name, TensorMap(goff, list(bseg.shape), seg.dtype, axes)))
        return len(self.maps) - 1, gathered(old, axes, tuple(seg.shape))

    def _candidates(self, chunk: bytes, itemsize: int, base: bytes | None,
                    dict_data: bytes | None) -> tuple[int, bytes | None]:
        """The kind whose payload is smallest (estimated alone at the selection level) and,
        for grouped kinds, the transformed bytes (DICT: the finished payload)."""
        lv, best, size = self.level, (codec.RAW, chunk), -1
        kinds = [codec.RAW, codec.RAWP] if itemsize > 1 else [codec.RAW]
        if base is not None:
            kinds += [codec.XOR, codec.SUB] + ([codec.SPARSE] if itemsize == 1 else [])
        for kind in kinds:
            data = codec.transform(kind, chunk, base, itemsize)
            n = len(codec.compress(data, lv))
            if size < 0 or n < size:
                best, size = (kind, data), n
        if dict_data:
            blob = codec.encode(codec.DICT, chunk, dict_data, 1, lv)
            if len(blob) < size:
                return codec.DICT, blob
        return best

    def _gap_for(self, fi: int, seg: SegmentEntry, ordinal: dict[int, int]
                 ) -> tuple[int, int] | None:
        """The base's between-tensor run at the same ordinal position in the same file."""
        if seg.name or self.old is None:
            return None
        k = ordinal.get(fi, 0)
        ordinal[fi] = k + 1
        gaps = self.index.gaps.get(fi, [])
        return gaps[k] if k < len(gaps) else None

    def _changed(self, fi: int, seg: SegmentEntry, start: int, n: int,
                 tbase: tuple[int, int | bytes] | None, gap: tuple[int, int] | None
                 ) -> tuple[int, int, bytes | None]:
        """(kind, base offset, data) of a chunk the base lacks."""
        chunk = self.new.read(self.new.start(fi) + start, n)
        base: bytes | None = None
        dict_data: bytes | None = None
        off, rel, old = 0, start - seg.offset, self.old
        if tbase is not None:
            off, src = tbase
            if isinstance(src, bytes):  # gathered: off is the map index
                base = src[rel:rel + n]
            elif old is not None:
                off = src + rel
                base = old.read(off, n)
        elif gap is not None and old is not None:
            lo = max(0, rel - DICT_BACK)
            dn = min(codec.MAX_DICT, gap[1] - lo)
            if dn > 0:
                off = gap[0] + lo
                dict_data = old.read(off, dn)
        kind, data = self._candidates(chunk, ITEMSIZE.get(seg.dtype, 1), base, dict_data)
        if tbase is not None and tbase[0] >= 0 and kind in codec.BASED:
            kind |= codec.GATHER
        if kind in (codec.RAW, codec.RAWP):
            off = 0
        return kind, off, data

    def run(self) -> list[list]:
        """One ``[kind, offset, data]`` per target chunk (data: None for REF, the payload
        for DICT, the transformed bytes for grouped kinds)."""
        ops: list[list] = []
        current: tuple[int, str] | None = None
        tbase: tuple[int, int | bytes] | None = None
        ordinal: dict[int, int] = {}
        gap: tuple[int, int] | None = None
        for fi, seg, _i, h, start, n in chunks(self.m):
            if current != (fi, seg.name or f"@{seg.offset}"):
                current = (fi, seg.name or f"@{seg.offset}")
                tbase = self._tensor_base(fi, seg)
                gap = self._gap_for(fi, seg, ordinal)
            off, kind, data = self.index.by_hash.get(h, -1), codec.REF, None
            if off < 0:
                kind, off, data = self._changed(fi, seg, start, n, tbase, gap)
            if kind in RELATIVE:
                off -= self.new.start(fi) + start
            ops.append([kind, off, data])
        return ops


def group_levels(total: int, level: int) -> tuple[tuple[int, ...], bool]:
    """zstd levels (the smallest frame wins) and whether to try xz, by the grouped bytes'
    total: thorough for small payloads (cheap there), fast for large ones. Level 1 is tried
    too because on sparse residuals it often beats the middle levels."""
    if total <= SMALL:
        return (1, 19), True
    return (1, max(level, 3)), False


def assemble(ops: list[list], level: int) -> tuple[bytes, bytes, list[float]]:
    """Op table, payload and each op's share of the payload (a group frame's bytes shared
    in proportion to its ops' transformed bytes): grouped kinds are cut into frames of at
    most ``codec.MAX_GROUP`` transformed bytes; the first op of a frame carries it, the
    others carry CONT."""
    groups: list[tuple[int, list[bytes]]] = []  # (opener op index, parts)
    size = 0
    for j, op in enumerate(ops):
        if op[0] & ~codec.GATHER not in codec.GROUPED:
            continue
        if not groups or size + len(op[2]) > codec.MAX_GROUP:
            groups.append((j, []))
            size = 0
        else:
            op[0] |= codec.CONT
        groups[-1][1].append(op[2])
        size += len(op[2])
    total = sum(len(p) for _, parts in groups for p in parts)
    levels, xz = group_levels(total, level)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        frames = list(pool.map(lambda g: codec.compress_group(b"".join(g[1]), levels, xz),
                               groups))
    blobs = {j: f for (j, _), f in zip(groups, frames, strict=True)}
    ratio = {j: len(f) / max(1, sum(map(len, parts)))
             for (j, parts), f in zip(groups, frames, strict=True)}
    table, payload, shares, r = bytearray(), [], [], 0.0
    for j, (kind, off, data) in enumerate(ops):
        blob = blobs.get(j, data if kind & ~codec.GATHER == codec.DICT else b"")
        table += codec.OP.pack(kind, off, len(blob))
        payload.append(blob)
        r = ratio.get(j, r)
        grouped = kind & ~(codec.GATHER | codec.CONT) in codec.GROUPED
        shares.append(r * len(data) if grouped else len(blob))
    return bytes(table), b"".join(payload), shares


def encode(target: SignedManifest, new_path: Path, base: Manifest,
           old_path: Path | None = None, level: int = 3) -> tuple[bytes, DeltaStats]:
    """Delta turning the base files into the target's files.

    With ``old_path`` the old bytes are used for XOR/SUB encodings against the tensor of
    the same name (gathered through a channel map when the shape changed) and DICT for
    headers; without it (device manifest only) chunks the device lacks by hash are sent
    compressed and the rest are references.
    """
    t0 = time.perf_counter()
    m = target.manifest
    with Files(Path(new_path), m) as new, Files.maybe(old_path, base) as old, \
            ThreadPoolExecutor(1) as pool:
        full_job = pool.submit(_full, new, m, max(level, 3))  # zstd releases the GIL
        enc = _Encoder(target, base, new, old, level)
        raw_ops = enc.run()
        full = full_job.result()
    ops, payload, lengths = assemble(raw_ops, level)
    stats = enc.stats
    for (kind, *_rest), n in zip(raw_ops, lengths, strict=True):
        stats.count(kind, round(n))
    stats.full_zstd_bytes = len(full)
    header = Header(target, [BaseFile(f.path, f.size, f.blake3) for f in base.files], enc.maps)
    dict_bytes = base.normalized()
    head = header.to_bytes(bytes(ops), dict_bytes)
    full_op = codec.OP.pack(codec.FULL, 0, len(full))
    plain = Header(target, header.base).to_bytes(full_op, dict_bytes)
    if len(head) + len(payload) > len(plain) + len(full):
        stats.fallback = True
        log.info("delta not smaller than the full compressed target; sending it in full")
        head, payload = plain, full
        stats.ops, stats.op_bytes = {"full": 1}, {"full": len(full)}
    out = b"".join([head, payload])
    stats.header_bytes = len(head)
    stats.delta_bytes = len(out)
    stats.encode_s = time.perf_counter() - t0
    return out, stats


def _full(new: Files, m: Manifest, level: int) -> bytes:
    """Every target file, concatenated, as one zstd stream."""
    c = zstandard.ZstdCompressor(level=level).compressobj(size=m.size)
    parts = [c.compress(new.read(new.start(fi), f.size)) for fi, f in enumerate(m.files)]
    return b"".join([*parts, c.flush()])
