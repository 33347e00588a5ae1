"""What an ``.npz`` declares, read without inflating it.

An ``.npz`` is a zip archive of ``.npy`` files. numpy allocates each array at the size its
``.npy`` header declares and then inflates the member into it, so a megabyte of deflated
zeros can declare a gigabyte. ``read_headers`` reads only the zip directory and each
member's header (a few hundred bytes each) and checks that every member holds what it
declares; ``verify_members`` inflates the members in fixed-size chunks so zipfile checks
their CRCs. Both cost kilobytes of memory whatever the file declares.
"""

from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hadmc_core.errors import DatasetError

#: At most this many arrays in one ``.npz`` (zipfile holds the whole directory in memory).
MAX_MEMBERS = 64
#: numpy's own default limit on a ``.npy`` header.
MAX_HEADER_BYTES = 10_000
#: numpy writes members stored (``savez``) or deflated (``savez_compressed``); zipfile
#: inflates bzip2 and LZMA members without an output bound, so those are refused.
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
CHUNK = 1 << 20

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")


@dataclass(frozen=True)
class NpyMember:
    """One array of an ``.npz`` as its headers declare it."""

    name: str  # without ``.npy``
    shape: tuple[int, ...]
    dtype: np.dtype
    file_size: int  # inflated size of the zip member (header included)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _entry_count(f: BinaryIO) -> int | None:
    """Entries in the zip's directory, from its end record (None when it is not found)."""
    size = f.seek(0, 2)
    start = max(0, size - _EOCD.size - 0xFFFF)
    f.seek(start)
    tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _EOCD.size:
        return None
    count = _EOCD.unpack_from(tail, at)[4]
    if count != 0xFFFF or at < _ZIP64_LOCATOR.size:
        return int(count)
    sig, _disk, offset, _disks = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
    if sig != b"PK\x06\x07":
        return int(count)
    f.seek(offset)
    record = f.read(_ZIP64_EOCD.size)
    if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
        return None
    return int(_ZIP64_EOCD.unpack(record)[7])


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> NpyMember:
    where = f"{source}: member {info.filename!r}"
    if not info.filename.endswith(".npy") or info.is_dir():
        raise DatasetError(f"{where} is not an .npy array; an .npz holds only arrays")
    if info.flag_bits & 0x1:
        raise DatasetError(f"{where} is encrypted")
    if info.compress_type not in METHODS:
        raise DatasetError(f"{where} is compressed with method {info.compress_type}; only "
                           "stored or deflate members are read (as numpy.savez and "
                           "numpy.savez_compressed write them)")
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(
                f, max_header_size=MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(
                f, max_header_size=MAX_HEADER_BYTES)
        else:
            raise DatasetError(f"{where}: .npy format version {version} is not supported")
        header = f.tell()
    if dtype.hasobject:
        raise DatasetError(f"{where} holds Python objects (pickles), which are never loaded")
    member = NpyMember(info.filename[:-4], tuple(int(d) for d in shape), dtype, info.file_size)
    if header + member.nbytes > info.file_size:
        raise DatasetError(f"{where} declares shape {member.shape} of {dtype} "
                           f"({member.nbytes} bytes) but holds {info.file_size - header} bytes")
    return member


def read_headers(path: Path, source: str | None = None) -> dict[str, NpyMember]:
    """The arrays of the ``.npz`` at ``path`` as declared, each checked against its member's
    size; DatasetError for anything but a zip of at most MAX_MEMBERS plain ``.npy`` arrays."""
    source = source or str(path)
    try:
        with open(path, "rb") as f:
            count = _entry_count(f)
            if count is not None and count > MAX_MEMBERS:
                raise DatasetError(f"{source} holds {count} files; an .npz dataset holds at "
                                   f"most {MAX_MEMBERS} arrays")
            with zipfile.ZipFile(f) as z:
                infos = z.infolist()
                if len(infos) > MAX_MEMBERS:
                    raise DatasetError(f"{source} holds {len(infos)} files; an .npz dataset "
                                       f"holds at most {MAX_MEMBERS} arrays")
                members = [_read_member(z, info, source) for info in infos]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
        raise DatasetError(f"{source} is truncated or not a valid .npz file: {e}") from e
    return {m.name: m for m in members}


def verify_members(path: Path, source: str | None = None) -> None:
    """Inflate every member a chunk at a time so zipfile checks its size and CRC."""
    source = source or str(path)
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    while f.read(CHUNK):
                        pass
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
        raise DatasetError(f"{source} is truncated or corrupt: {e}") from e


def load_member(path: Path, name: str, source: str | None = None) -> np.ndarray:
    """One array of the ``.npz``, never unpickled; numpy allocates what the array's header
    declares, so check it with ``read_headers`` first."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return np.asarray(f[name])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DatasetError(f"{source or path}: array {name!r} cannot be read: {e}") from e
