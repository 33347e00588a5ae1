"""The delta container.

``MAGIC | u32 n | prefix (JSON, n bytes) | u32 n | header (zstd) | u32 n | op table (zstd) |
payload``.

The prefix names the base files (path, size, BLAKE3) and the chunk size. The header is the
canonical JSON of the signed target manifest and the tensor maps of gathered ops; it is
compressed with the *base manifest* (normalized, see ``manifest.normalized``) as a zstd
dictionary, which the device recomputes from its own base files, so only what changed costs
bytes. The op table has one ``OP`` entry per target chunk in manifest order (or a single
FULL entry). Base offsets of REF/XOR/SUB/DICT ops are stored relative to the chunk's own
position in the concatenated target, so unmoved chunks cost zeros.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import zstandard

from hadmc_core.delta import codec
from hadmc_core.delta.errors import FormatError, TruncatedDeltaError
from hadmc_core.delta.keys import SignedManifest
from hadmc_core.delta.manifest import (
    _HEX,
    MAX_FILE_SIZE,
    MAX_FILES,
    MAX_MANIFEST_BYTES,
    Manifest,
    _chunk_size,
    canonical,
    loads,
)
from hadmc_core.delta.tensormap import MAX_MAP_ENTRIES, TensorMap

MAX_PREFIX = 64 * 1024
MAX_HEADER = MAX_MANIFEST_BYTES + 16 * 1024 * 1024
MAX_OPS = codec.OP.size * (1 << 20)
RELATIVE = (codec.REF, codec.XOR, codec.SUB, codec.DICT, codec.SPARSE)


@dataclass
class BaseFile:
    path: str
    size: int
    blake3: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "blake3": self.blake3}


@dataclass
class Header:
    target: SignedManifest
    base: list[BaseFile]
    maps: list[tuple[int, str, TensorMap]] = field(default_factory=list)  # file, tensor, map

    @property
    def base_size(self) -> int:
        return sum(b.size for b in self.base)

    def to_bytes(self, ops: bytes, base_manifest: bytes) -> bytes:
        """Everything before the payload."""
        prefix = canonical({"base": [b.to_dict() for b in self.base],
                            "chunk_size": self.target.manifest.chunk_size})
        head = canonical({"target": self.target.to_dict(),
                          "maps": [{"file": fi, "tensor": t, **m.to_dict()}
                                   for fi, t, m in self.maps]})
        zd = zstandard.ZstdCompressionDict(base_manifest,
                                           dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        zhead = zstandard.ZstdCompressor(level=19, dict_data=zd, write_checksum=True
                                         ).compress(head)
        zops = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(ops)
        return b"".join([codec.MAGIC, struct.pack("<I", len(prefix)), prefix,
                         struct.pack("<I", len(zhead)), zhead, struct.pack("<I", len(zops)),
                         zops])


def read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TruncatedDeltaError(f"delta ends inside {what} (wanted {n} bytes, got "
                                  f"{len(data)}); download it again")
    return data


def _block(f: BinaryIO, cap: int, what: str) -> bytes:
    (n,) = struct.unpack("<I", read_exact(f, 4, f"the length of {what}"))
    if n > cap:
        raise FormatError(f"delta {what} is larger than its {cap >> 10} KiB cap")
    return read_exact(f, n, what)


def read_prefix(f: BinaryIO) -> tuple[list[BaseFile], int]:
    """The base files and chunk size: enough to check the base before anything else."""
    if read_exact(f, len(codec.MAGIC), "the magic") != codec.MAGIC:
        raise FormatError("not a HAD-MC delta (bad magic or another format version)")
    d = loads(_block(f, MAX_PREFIX, "prefix"), "delta prefix")
    try:
        base = [BaseFile(b["path"], b["size"], b["blake3"]) for b in d["base"]]
        chunk_size = _chunk_size(d["chunk_size"])
    except (KeyError, TypeError, AttributeError) as e:
        raise FormatError(f"delta prefix is malformed: {str(e)[:200]}") from e
    if not 1 <= len(base) <= MAX_FILES or any(
            not isinstance(b.path, str) or type(b.size) is not int
            or not 0 <= b.size <= MAX_FILE_SIZE or not isinstance(b.blake3, str)
            or not _HEX.match(b.blake3) for b in base):
        raise FormatError("delta prefix lists an impossible base")
    return base, chunk_size


def _unzstd(blob: bytes, cap: int, what: str, dict_data: bytes | None = None) -> bytes:
    try:
        declared = zstandard.frame_content_size(blob)
        if declared < 0 or declared > cap:
            raise FormatError(f"delta {what} declares an impossible size")
        zd = (zstandard.ZstdCompressionDict(dict_data, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
              if dict_data is not None else None)
        return zstandard.ZstdDecompressor(dict_data=zd).decompress(blob, max_output_size=cap)
    except zstandard.ZstdError as e:
        raise FormatError(f"delta {what} does not decompress ({e}): the delta is corrupt or "
                          "the base manifest differs; download the delta again") from e


def read_body(f: BinaryIO, base: list[BaseFile], base_manifest: bytes) -> tuple[Header, bytes]:
    """The header (target manifest, maps) and the raw op table."""
    head = loads(_unzstd(_block(f, MAX_HEADER, "header"), MAX_HEADER, "header", base_manifest),
                 "delta header")
    ops = _unzstd(_block(f, MAX_OPS, "op table"), MAX_OPS, "op table")
    if not isinstance(head, dict):
        raise FormatError("delta header is not an object")
    target = SignedManifest.from_dict(head.get("target"))
    raw_maps = head.get("maps")
    if not isinstance(raw_maps, list):
        raise FormatError("delta header maps must be a list")
    h = Header(target, base)
    h.maps = _maps(raw_maps, target.manifest, h.base_size)
    n = target.manifest.n_chunks
    full = len(ops) == codec.OP.size and ops[0] == codec.FULL
    if not full and len(ops) != codec.OP.size * n:
        raise FormatError(f"delta op table has {len(ops) // codec.OP.size} entries for "
                          f"{n} chunks; the delta is corrupt")
    return h, ops


def _maps(raw: list[Any], m: Manifest, base_size: int) -> list[tuple[int, str, TensorMap]]:
    shapes = {(fi, s.name): s.shape for fi, f in enumerate(m.files) for s in f.segments
              if s.name and s.dtype != "bytes"}
    out, entries = [], 0
    for d in raw:
        if not isinstance(d, dict) or (d.get("file"), d.get("tensor")) not in shapes:
            raise FormatError("delta tensor map names a tensor the target does not have")
        key = (d["file"], d["tensor"])
        tm = TensorMap.from_dict(d, shapes[key], base_size)
        entries += tm.entries()
        if entries > MAX_MAP_ENTRIES:
            raise FormatError("delta tensor maps exceed their cap")
        out.append((key[0], key[1], tm))
    return out
