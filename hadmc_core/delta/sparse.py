"""The ``sub-sparse`` layout of a SUB residual: most words unchanged, the rest small.

Re-quantized INT8 weights after a fine-tune differ from the base in a few percent of their
values, almost always by ±1. As bytes (zigzag 0, 1 or 2) every value costs zstd at least one
bit. Here each changed word is one symbol, ``2 * min(gap, 127) + sign`` (gap: unchanged
words since the previous change), which zstd's Huffman stage codes at about its entropy
(the gaps are roughly geometric); magnitudes minus one are almost all zero.

Layout of one chunk of ``n`` bytes (``w = n // itemsize`` words, ``c`` of them changed):
``u32 c | c symbols | u32 (gap - 127) per symbol >= 254 | |d| - 1 (c words, byte planes) |
tail (n - w * itemsize bytes, XOR)``. It is self-delimiting.
"""

from __future__ import annotations

import numpy as np

from hadmc_core.delta.errors import ChunkMismatchError

UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
ESCAPE_GAP = 127  # symbols 254 and 255: the gap continues in the escape list


def _planes(a: np.ndarray, itemsize: int) -> bytes:
    return a.view(np.uint8).reshape(-1, itemsize).T.tobytes()


def _unplanes(data: bytes | memoryview, count: int, itemsize: int) -> np.ndarray:
    arr = np.frombuffer(data, np.uint8, count=count * itemsize).reshape(itemsize, count)
    return np.ascontiguousarray(arr.T).view(UINT[itemsize]).reshape(-1)


def max_size(n: int, itemsize: int) -> int:
    """The most bytes a chunk of ``n`` bytes can take in this layout (every escape stands
    for at least 127 words)."""
    w = n // itemsize
    return 4 + w + 4 * (w // ESCAPE_GAP + 1) + n


def pack(zigzag: bytes, itemsize: int) -> bytes:
    """From ``codec.sub``'s output (zigzag words, then the XOR tail)."""
    w = len(zigzag) // itemsize
    z = np.frombuffer(zigzag, UINT[itemsize], count=w)
    pos = np.flatnonzero(z)
    v = z[pos]
    one = UINT[itemsize](1)
    gap = np.diff(pos, prepend=-1) - 1
    sym = (2 * np.minimum(gap, ESCAPE_GAP) + (v & one)).astype(np.uint8)
    esc = (gap[gap >= ESCAPE_GAP] - ESCAPE_GAP).astype("<u4")
    mag = (v >> one) + (v & one) - one  # |d| - 1
    return b"".join([len(pos).to_bytes(4, "little"), sym.tobytes(), esc.tobytes(),
                     _planes(mag, itemsize), zigzag[w * itemsize:]])


def unpack(view: memoryview, pos: int, n: int, itemsize: int, label: str) -> tuple[bytes, int]:
    """``codec.sub``'s output for an ``n``-byte chunk read at ``pos``, and the next
    position."""
    w = n // itemsize
    _need(view, pos, 4, label)
    c = int.from_bytes(view[pos:pos + 4], "little")
    if c > w:
        raise ChunkMismatchError(f"chunk {label}: sparse residual claims {c} changed words "
                                 f"of {w}; the delta is corrupt: download it again")
    _need(view, pos + 4, c, label)
    sym = np.frombuffer(view, np.uint8, c, pos + 4)
    pos += 4 + c
    gap = (sym >> 1).astype(np.int64)
    escaped = gap == ESCAPE_GAP
    e = int(escaped.sum())
    _need(view, pos, 4 * e, label)
    gap[escaped] += np.frombuffer(view, "<u4", e, pos)
    pos += 4 * e
    where = np.cumsum(gap + 1) - 1
    if c and where[-1] >= w:
        raise ChunkMismatchError(f"chunk {label}: sparse residual points past its chunk; "
                                 "the delta is corrupt: download it again")
    tail = n - w * itemsize
    _need(view, pos, c * itemsize + tail, label)
    dt = UINT[itemsize]
    mag = _unplanes(view[pos:pos + c * itemsize], c, itemsize)
    pos += c * itemsize
    z = np.zeros(w, dt)
    z[where] = (mag + dt(1)) * dt(2) - (sym & 1).astype(dt)  # wraps like the zigzag did
    return z.tobytes() + bytes(view[pos:pos + tail]), pos + tail


def _need(view: memoryview, pos: int, n: int, label: str) -> None:
    if pos + n > len(view):
        raise ChunkMismatchError(f"chunk {label}: group frame ends inside the chunk; the "
                                 "delta is corrupt: download it again")
