"""Apply a delta: streaming, bounded memory, every hash checked, atomic output."""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import IO, BinaryIO, cast

import blake3
import numpy as np
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from hadmc_core.delta import codec
from hadmc_core.delta.build import file_entries
from hadmc_core.delta.container import (
    RELATIVE,
    BaseFile,
    Header,
    read_body,
    read_exact,
    read_prefix,
)
from hadmc_core.delta.errors import (
    BaseMismatchError,
    ChunkMismatchError,
    FormatError,
    TruncatedDeltaError,
)
from hadmc_core.delta.formats import ITEMSIZE
from hadmc_core.delta.groups import Group, group_sizes
from hadmc_core.delta.manifest import FileHasher, Manifest, SegmentEntry, chunks, label
from hadmc_core.delta.reader import Files, artifact_paths
from hadmc_core.fsutil import fsync_dir

BLOB_SLACK = 1024 + 4  # zstd framing (+ DICT's length prefix) over a chunk's own size


def apply_delta(old_path: Path, delta_path: Path, out_path: Path,
                public_key: Ed25519PublicKey | None = None, min_version: int | None = None,
                now: float | None = None) -> Manifest:
    """Rebuild the target at ``out_path`` (external data files beside it) from the base at
    ``old_path``. Raise a DeltaError and leave the outputs untouched on any failure.
    Returns the verified target manifest."""
    old_path, out_path = Path(old_path), Path(out_path)
    with Path(delta_path).open("rb") as f:
        base_files, chunk_size = read_prefix(f)
        base = _check_base(old_path, base_files, chunk_size)
        header, ops = read_body(f, base_files, base.normalized())
        if public_key is not None:
            header.target.verify(public_key)
        m = header.target.manifest
        if m.chunk_size != chunk_size:
            raise FormatError("delta prefix and manifest disagree on the chunk size")
        m.check_fresh(now, min_version)
        outs = artifact_paths(out_path, [x.path for x in m.files])
        with ExitStack() as stack:
            temps = [_temp(stack, p) for p in outs]
            try:
                with Files(old_path, base, release=True) as files:
                    if ops[0] == codec.FULL:
                        _write_full(f, codec.OP.unpack(ops)[2], m, temps)
                    else:
                        _write_ops(f, ops, header, files, temps)
                if f.read(1):
                    raise FormatError("delta has trailing bytes after its payload; it is "
                                      "corrupt: download it again")
                for fh, _tmp in temps:
                    fh.flush()
                    os.fsync(fh.fileno())
                for (_fh, tmp), p in list(zip(temps, outs, strict=True))[::-1]:
                    os.replace(tmp, p)  # external data first, the model file last
                fsync_dir(out_path.parent, strict=False)  # the outputs are in place
            except BaseException:
                for _fh, tmp in temps:
                    Path(tmp).unlink(missing_ok=True)
                raise
    return m


def _temp(stack: ExitStack, path: Path) -> tuple[BinaryIO, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    return stack.enter_context(os.fdopen(fd, "wb")), tmp


def _check_base(old_path: Path, base: list[BaseFile], chunk_size: int) -> Manifest:
    """Hash every base file (chunks and whole file) and compare with what the delta was
    made against, before any base byte is used. Returns the base manifest."""
    paths = artifact_paths(old_path, [b.path for b in base])
    for b, p in zip(base, paths, strict=True):
        if not p.is_file():
            raise BaseMismatchError(f"base file {p} not found; the delta needs it")
        if p.stat().st_size != b.size:
            raise BaseMismatchError(f"{p} is not the version this delta was made against "
                                    f"({p.stat().st_size} bytes, expected {b.size}); fetch "
                                    "the full file instead")
    try:
        entries = file_entries(old_path, base[0].path, chunk_size)
    except FormatError as e:
        raise BaseMismatchError(f"base {old_path} cannot be read: {e}") from e
    if [entry.path for entry in entries] != [b.path for b in base]:
        raise BaseMismatchError(f"base {old_path} has other files than the delta expects "
                                f"({[b.path for b in base]}); fetch the full file instead")
    for entry, b, p in zip(entries, base, paths, strict=True):
        if entry.blake3 != b.blake3:
            raise BaseMismatchError(
                f"{p} is not the version this delta was made against (expected BLAKE3 "
                f"{b.blake3[:16]}, got {entry.blake3[:16]}); fetch the full file instead")
    return Manifest("", 0, 0, 0, chunk_size, entries)


class _Out:
    """Writes chunks to the temp files, checking each chunk's and each file's hash."""

    def __init__(self, m: Manifest, temps: list[tuple[BinaryIO, str]]) -> None:
        self.m, self.temps = m, temps
        self.fi, self.hasher = 0, FileHasher()

    def write(self, fi: int, data: bytes, h: str, what: str) -> None:
        digest = blake3.blake3(data).digest()
        if digest.hex() != h:
            raise ChunkMismatchError(f"chunk {what}: hash mismatch; the delta or the base is "
                                     "corrupt or was mixed from another model: download the "
                                     "delta again")
        self._advance(fi)
        self.hasher.update(digest, len(data))
        self.temps[fi][0].write(data)

    def _advance(self, fi: int) -> None:
        while self.fi < fi:
            f = self.m.files[self.fi]
            if self.hasher.hexdigest() != f.blake3:
                raise ChunkMismatchError(f"rebuilt file {f.path} hash differs from the signed "
                                         "manifest's; refusing it")
            self.fi, self.hasher = self.fi + 1, FileHasher()

    def close(self) -> None:
        self._advance(len(self.m.files))


def _write_ops(payload: BinaryIO, ops: bytes, h: Header, base: Files,
               temps: list[tuple[BinaryIO, str]]) -> None:
    m, out = h.target.manifest, _Out(h.target.manifest, temps)
    sizes = group_sizes(ops, m)
    gathers: dict[int, np.ndarray] = {}
    group = Group()
    for j, (fi, seg, i, hsh, start, n) in enumerate(chunks(m)):
        what = label(m, fi, seg, i)
        kind, off, length = codec.OP.unpack_from(ops, j * codec.OP.size)
        if not codec.valid(kind) or kind == codec.FULL:
            raise FormatError(f"chunk {what}: unknown op kind {kind}; the delta is corrupt")
        if kind & ~codec.CONT in RELATIVE:
            off += base_start(m, fi) + start
        cap = sizes.get(j, n)
        if length > cap + cap // 8 + BLOB_SLACK:
            raise FormatError(f"chunk {what}: payload of {length} bytes is over its cap")
        blob = read_exact(payload, length, f"the payload of chunk {what}")
        if j in sizes:
            group.open(blob, cap, what)
        try:
            if kind & ~(codec.CONT | codec.GATHER) in codec.GROUPED:
                ref = _ref(h, gathers, base, kind, fi, seg, start, off, n, what)
                data, group.pos = codec.untransform(kind, group.view, group.pos, n, ref,
                                                    ITEMSIZE.get(seg.dtype, 1), what)
            else:
                data = _plain(kind, blob, base, off, n, what)
        except FormatError as e:
            if str(e).startswith("chunk"):
                raise
            raise FormatError(f"chunk {what}: {e}; the delta is corrupt") from e
        out.write(fi, data, hsh, f"{what} ({codec.name(kind)})")
    group.close()
    _release(gathers, base, h)
    out.close()


def _ref(h: Header, gathers: dict[int, np.ndarray], base: Files, kind: int, fi: int,
         seg: SegmentEntry, start: int, off: int, n: int, what: str) -> bytes | None:
    """The base words a grouped chunk is coded against (None for RAW/RAWP)."""
    if kind & codec.GATHER:
        itemsize = ITEMSIZE.get(seg.dtype, 1)
        src = _gather_base(h, gathers, base, fi, seg, off, what)
        e0 = (start - seg.offset) // itemsize
        return h.maps[off][2].gather(src, seg.shape, e0, e0 + n // itemsize)
    if kind & ~codec.CONT in codec.BASED:
        return base.read(off, n)
    return None


def _plain(kind: int, blob: bytes, base: Files, off: int, n: int, what: str) -> bytes:
    """REF and DICT chunks."""
    if kind == codec.REF:
        return base.read(off, n)
    if kind == codec.DICT:
        dn = int.from_bytes(blob[:4], "little")
        if dn > codec.MAX_DICT:
            raise FormatError(f"chunk {what}: dictionary over its cap")
        return codec.decode(kind, blob, base.read(off, dn), 1, n, what)
    raise FormatError(f"chunk {what}: unknown op kind {kind}; the delta is corrupt")


def base_start(m: Manifest, fi: int) -> int:
    """Where target file ``fi`` starts in the concatenated target."""
    return sum(f.size for f in m.files[:fi])


def _gather_base(h: Header, cache: dict[int, np.ndarray], base: Files, fi: int,
                 seg: SegmentEntry, idx: int, what: str) -> np.ndarray:
    if idx >= len(h.maps) or h.maps[idx][:2] != (fi, seg.name):
        raise FormatError(f"chunk {what}: tensor map {idx} belongs to another tensor")
    tm = h.maps[idx][2]
    if ITEMSIZE[tm.dtype] != ITEMSIZE.get(seg.dtype, 0):
        raise FormatError(f"chunk {what}: tensor map dtype differs from the tensor's")
    if idx not in cache:
        _release(cache, base, h)  # one base tensor view at a time
        dt = np.dtype(codec.UINT[ITEMSIZE[tm.dtype]])
        count = int(np.prod(tm.base_shape, dtype=np.int64))
        cache[idx] = base.array(tm.base_offset, count, dt)
    return cache[idx]


def _release(cache: dict[int, np.ndarray], base: Files, h: Header) -> None:
    """Forget the cached base tensor view and drop its pages from memory."""
    for idx, arr in cache.items():
        base.release_range(h.maps[idx][2].base_offset, arr.nbytes)
    cache.clear()


def _write_full(f: BinaryIO, length: int, m: Manifest,
                temps: list[tuple[BinaryIO, str]]) -> None:
    out = _Out(m, temps)
    # stream_reader only calls read(); _Limited is that much of a file, not a whole IO
    source = cast(IO[bytes], _Limited(f, length))
    reader = zstandard.ZstdDecompressor().stream_reader(source)
    try:
        for fi, seg, i, h, _start, n in chunks(m):
            what = label(m, fi, seg, i)
            data = reader.read(n)
            while len(data) < n:
                more = reader.read(n - len(data))
                if not more:
                    raise TruncatedDeltaError(f"full payload ends before chunk {what}")
                data += more
            out.write(fi, data, h, f"{what} (full)")
        if reader.read(1):
            raise FormatError("full payload is longer than the target; the delta is corrupt")
        out.close()
    except zstandard.ZstdError as e:
        raise ChunkMismatchError(f"full payload does not decompress: {e}; download the "
                                 "delta again") from e


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
            raise TruncatedDeltaError("delta ends inside its full payload; download it again")
        self.left -= len(data)
        return data
