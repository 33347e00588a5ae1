"""Chunk encodings shared by the encoder and the applier.

Kinds (the op table's ``u8 kind``; see docs/delta.md):

- REF: copy the chunk from the base at the offset (same hash, anywhere in the base);
- XOR: words XOR the base words, split into byte planes, zstd (fine-tuned floats);
- SUB: words minus the base words (wrapping), zigzag, byte planes, zstd (INT8, integers,
  and floats whose changes carry across bytes);
- SPARSE: SUB's residual as a changed-word bit mask, signs and magnitudes (``sparse``);
- RAW: zstd of the chunk; RAWP: byte planes, then zstd;
- DICT: zstd with base bytes as a raw-content dictionary (headers, graph protobuf);
- FULL (alone): every target file as one zstd stream (the never-bigger fallback).

``GATHER`` (0x80) on XOR/SUB: the base words are the same-name base tensor indexed by
per-axis channel maps (pruned or reshaped tensors); the op's offset is the map's index.

Groups: the transformed bytes (``transform``) of XOR/SUB/RAW/RAWP chunks are concatenated
and compressed as one zstd frame (with checksum), carried by the first op of the group; the
group's later ops carry ``CONT`` (0x40) and no payload. Small chunks (BatchNorm statistics,
quantization scales) thus share one frame and its context instead of paying a frame each.
"""

from __future__ import annotations

import lzma
import struct

import numpy as np
import zstandard

from hadmc_core.delta import sparse
from hadmc_core.delta.errors import ChunkMismatchError

MAGIC = b"HDMCDLT3"
OP = struct.Struct("<BqI")  # kind, base offset (signed, see container), payload length
REF, XOR, SUB, RAW, RAWP, DICT, SPARSE, FULL = 0, 1, 2, 3, 4, 5, 6, 9
GATHER, CONT = 0x80, 0x40
GROUPED = (XOR, SUB, RAW, RAWP, SPARSE)  # kinds whose transformed bytes go into groups
KIND_NAMES = {REF: "ref", XOR: "xor", SUB: "sub", RAW: "raw", RAWP: "raw-planes",
              DICT: "dict", SPARSE: "sub-sparse", FULL: "full", XOR | GATHER: "xor-gather",
              SUB | GATHER: "sub-gather", SPARSE | GATHER: "sub-sparse-gather"}
BASED = (XOR, SUB, SPARSE)  # coded against base words
MAX_GROUP = 2 << 20  # decompressed bytes of one group frame (apply holds one in memory)
XZ_MAGIC, XZ_DICT, XZ_MEMLIMIT = b"\xfd7zXZ\x00", 8 << 20, 64 << 20
MAX_DICT = 1 << 20
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def name(kind: int) -> str:
    return KIND_NAMES.get(kind & ~CONT, f"kind{kind}")


def valid(kind: int) -> bool:
    """A kind an op table may hold (FULL only alone, checked by the caller)."""
    base = kind & ~CONT
    return base in KIND_NAMES and (not kind & CONT or base & ~GATHER in GROUPED)


def planes(data: bytes, itemsize: int) -> bytes:
    """Group byte k of every word together (the high bytes of floats compress well)."""
    if itemsize <= 1:
        return data
    n = len(data) // itemsize * itemsize
    arr = np.frombuffer(data, np.uint8, count=n).reshape(-1, itemsize)
    return arr.T.tobytes() + data[n:]


def unplanes(data: bytes | memoryview, itemsize: int) -> bytes:
    if itemsize <= 1:
        return bytes(data)
    n = len(data) // itemsize * itemsize
    arr = np.frombuffer(data, np.uint8, count=n).reshape(itemsize, -1)
    return arr.T.tobytes() + data[n:]


def _words(data: bytes | memoryview, itemsize: int) -> tuple[np.ndarray, bytes | memoryview]:
    n = len(data) // itemsize * itemsize
    return np.frombuffer(data, UINT[itemsize], count=n // itemsize), data[n:]


def xor(a: bytes | memoryview, b: bytes | memoryview) -> bytes:
    return (np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).tobytes()


def sub(new: bytes, old: bytes, itemsize: int) -> bytes:
    """Wrapping word difference, zigzagged so small changes of either sign are small."""
    a, tail_a = _words(new, itemsize)
    b, tail_b = _words(old, itemsize)
    d = a - b
    bits = 8 * itemsize - 1
    z = (d << 1) ^ (0 - (d >> bits))  # zigzag on the two's-complement pattern
    return z.astype(UINT[itemsize]).tobytes() + xor(tail_a, tail_b)


def unsub(diff: bytes | memoryview, old: bytes, itemsize: int) -> bytes:
    z, tail_z = _words(diff, itemsize)
    b, tail_b = _words(old, itemsize)
    one = UINT[itemsize](1)
    d = (z >> one) ^ (0 - (z & one))
    return (b + d).astype(UINT[itemsize]).tobytes() + xor(tail_z, tail_b)


def compress(data: bytes, level: int, dict_data: bytes | None = None) -> bytes:
    if dict_data:
        zd = zstandard.ZstdCompressionDict(dict_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return zstandard.ZstdCompressor(level=level, dict_data=zd).compress(data)
    return zstandard.ZstdCompressor(level=level).compress(data)


def decompress(blob: bytes, n: int, label: str, dict_data: bytes | None = None) -> bytes:
    """Decompress exactly ``n`` bytes, never allocating more than ``n``."""
    try:
        declared = zstandard.frame_content_size(blob)
        if declared not in (-1, n):
            raise ChunkMismatchError(f"chunk {label}: payload declares {declared} bytes, the "
                                     f"manifest {n}; the delta is corrupt: download it again")
        zd = (zstandard.ZstdCompressionDict(dict_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
              if dict_data else None)
        out = zstandard.ZstdDecompressor(dict_data=zd).decompress(blob, max_output_size=n)
    except zstandard.ZstdError as e:
        raise ChunkMismatchError(f"chunk {label}: payload does not decompress ({e}); the "
                                 "delta is corrupt: download it again") from e
    if len(out) != n:
        raise ChunkMismatchError(f"chunk {label}: payload decodes to {len(out)} bytes, "
                                 f"expected {n}; the delta is corrupt: download it again")
    return out


def transform(kind: int, chunk: bytes, base: bytes | None, itemsize: int) -> bytes:
    """The bytes that get compressed for a grouped kind."""
    k = kind & ~(GATHER | CONT)
    if k == RAW:
        return chunk
    if k == RAWP:
        return planes(chunk, itemsize)
    assert base is not None
    if k == XOR:
        return planes(xor(chunk, base), itemsize)
    if k == SUB:
        return planes(sub(chunk, base, itemsize), itemsize)
    if k == SPARSE:
        return sparse.pack(sub(chunk, base, itemsize), itemsize)
    raise ValueError(f"kind {kind} has no transform")


def group_limit(chunk_size: int) -> int:
    """The most bytes a group frame may decompress to: ``MAX_GROUP``, or one chunk in its
    largest layout when chunks are larger."""
    return max(MAX_GROUP, sparse.max_size(chunk_size, 1))


def max_size(kind: int, n: int, itemsize: int) -> int:
    """The most transformed bytes an ``n``-byte chunk of a grouped kind can take."""
    return sparse.max_size(n, itemsize) if kind & ~(GATHER | CONT) == SPARSE else n


def untransform(kind: int, view: memoryview, pos: int, n: int, base: bytes | None,
                itemsize: int, label: str) -> tuple[bytes, int]:
    """Rebuild an ``n``-byte chunk from the transformed bytes at ``pos`` of a group; the
    chunk and the position after it."""
    k = kind & ~(GATHER | CONT)
    data: bytes | memoryview
    if k == SPARSE:
        data, end = sparse.unpack(view, pos, n, itemsize, label)
    else:
        data, end = view[pos:pos + n], pos + n
        if end > len(view):
            raise ChunkMismatchError(f"chunk {label}: group frame ends inside the chunk; "
                                     "the delta is corrupt: download it again")
    if k == RAW:
        return bytes(data), end
    if k == RAWP:
        return unplanes(data, itemsize), end
    if base is None or len(base) != n:
        raise ChunkMismatchError(f"chunk {label}: base bytes unavailable for {name(kind)}")
    if k == XOR:
        return xor(unplanes(data, itemsize), base), end
    if k == SUB:
        return unsub(unplanes(data, itemsize), base, itemsize), end
    if k == SPARSE:
        return unsub(data, base, itemsize), end
    raise ChunkMismatchError(f"chunk {label}: unknown op kind {kind}")


def compress_group(data: bytes, levels: tuple[int, ...], try_xz: bool) -> bytes:
    """A group frame: the smallest of zstd (with checksum) at each level and, when asked,
    xz (LZMA2, CRC32), whose range coder spends fractions of a bit on skewed bytes where
    zstd's Huffman coding spends at least one."""
    blobs = [zstandard.ZstdCompressor(level=lv, write_checksum=True).compress(data)
             for lv in levels]
    if try_xz:
        blobs.append(lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                   filters=[{"id": lzma.FILTER_LZMA2, "preset": 6,
                                             "dict_size": XZ_DICT}]))
    return min(blobs, key=len)


def decompress_group(blob: bytes, cap: int, label: str) -> bytes:
    """A group frame's bytes (zstd or xz, told apart by their magic), at most ``cap``."""
    try:
        if not blob.startswith(XZ_MAGIC):
            declared = zstandard.frame_content_size(blob)
            if declared > cap:
                raise ChunkMismatchError(f"chunk {label}: group frame declares {declared} "
                                         f"bytes, over the {cap} its chunks can take")
            return zstandard.ZstdDecompressor().decompress(blob, max_output_size=cap)
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
        out = d.decompress(blob, max_length=cap)
        if not d.eof or d.unused_data:
            raise ChunkMismatchError(f"chunk {label}: group frame is longer than its chunks "
                                     "or does not end; the delta is corrupt")
        return out
    except (zstandard.ZstdError, lzma.LZMAError) as e:
        raise ChunkMismatchError(f"chunk {label}: payload does not decompress ({e}); the "
                                 "delta is corrupt: download it again") from e


def encode(kind: int, chunk: bytes, base: bytes | None, itemsize: int, level: int) -> bytes:
    """The payload of ``chunk`` alone under ``kind`` (DICT: ``base`` is the dictionary)."""
    if kind & ~GATHER == DICT:
        assert base is not None
        return struct.pack("<I", len(base)) + compress(chunk, level, base)
    return compress(transform(kind, chunk, base, itemsize), level)


def decode(kind: int, blob: bytes, base: bytes | None, itemsize: int, n: int,
           label: str) -> bytes:
    """Rebuild an ``n``-byte chunk from its own payload (REF is handled by the caller)."""
    if kind & ~GATHER == DICT:
        if base is None:
            raise ChunkMismatchError(f"chunk {label}: base bytes unavailable for dict")
        return decompress(blob[4:], n, label, base)
    if kind & ~GATHER not in GROUPED:
        raise ChunkMismatchError(f"chunk {label}: unknown op kind {kind}")
    view = memoryview(decompress_group(blob, max_size(kind, n, itemsize), label))
    data, end = untransform(kind, view, 0, n, base, itemsize, label)
    if end != len(view):
        raise ChunkMismatchError(f"chunk {label}: payload has trailing bytes")
    return data
