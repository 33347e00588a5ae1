"""Group frames on the apply side: how large each may be, and consuming one exactly.

The encoder (``encode.assemble``) concatenates the transformed bytes of consecutive grouped
chunks into one frame carried by the group's first op; the others carry ``CONT``.
"""

from __future__ import annotations

from hadmc_core.delta import codec
from hadmc_core.delta.errors import ChunkMismatchError, FormatError
from hadmc_core.delta.formats import ITEMSIZE
from hadmc_core.delta.manifest import Manifest, chunks, label


def group_sizes(ops: bytes, m: Manifest) -> dict[int, int]:
    """The most bytes each group frame may decompress to (what its chunks can take, at
    most ``codec.group_limit``), by the index of the op that carries it."""
    sizes: dict[int, int] = {}
    cur, limit = -1, codec.group_limit(m.chunk_size)
    for j, (fi, seg, i, _h, _start, n) in enumerate(chunks(m)):
        kind, _off, length = codec.OP.unpack_from(ops, j * codec.OP.size)
        if kind & ~(codec.CONT | codec.GATHER) not in codec.GROUPED:
            continue
        if not kind & codec.CONT:
            cur, sizes[j] = j, 0
        elif cur < 0 or length:
            raise FormatError(f"chunk {label(m, fi, seg, i)}: continues no group; the delta "
                              "is corrupt")
        sizes[cur] = min(limit, sizes[cur] + codec.max_size(kind, n, ITEMSIZE.get(seg.dtype,
                                                                                 1)))
    return sizes


class Group:
    """The group frame being consumed: every byte of it must be used, none more."""

    def __init__(self) -> None:
        self.view, self.pos, self.opener = memoryview(b""), 0, ""

    def open(self, blob: bytes, cap: int, what: str) -> None:
        self.close()
        self.view = memoryview(codec.decompress_group(blob, cap, what))
        self.pos, self.opener = 0, what

    def close(self) -> None:
        if self.pos != len(self.view):
            raise ChunkMismatchError(f"chunk {self.opener}: group frame has "
                                     f"{len(self.view) - self.pos} unused bytes; the delta "
                                     "is corrupt: download it again")
