"""The safetensors header, read and checked without the safetensors package or torch.

A safetensors file is a little-endian u64 ``n``, ``n`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {str: str}}``,
then the data region; offsets count from the start of the data region. The service checks
uploads with it (``strict``) and the delta engine finds the tensors of a file with it.
Nothing here executes or unpickles anything.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from hadmc_core.errors import InputFileError

MAX_HEADER = 100 * 1024 * 1024
#: Bytes per element of each safetensors dtype code.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
NOT_SAFETENSORS = ("not a safetensors file: {} (pickled PyTorch checkpoints are not accepted; "
                   "save with safetensors.torch.save_file)")


class SafetensorsHeaderError(InputFileError):
    """A file whose safetensors header is missing, malformed or out of bounds."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str                # the safetensors code: "F32", "BF16", ...
    shape: tuple[int, ...]
    start: int                # offsets into the data region
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def expected_nbytes(self) -> int | None:
        """What dtype and shape say the tensor takes; None for an unknown dtype."""
        if self.dtype not in DTYPE_BYTES:
            return None
        count = 1
        for d in self.shape:
            count *= d
        return count * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class SafetensorsHeader:
    header_len: int
    tensors: list[TensorEntry]     # in header order
    metadata: dict[str, str]

    @property
    def data_offset(self) -> int:
        """Where the data region starts in the file."""
        return 8 + self.header_len


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{value!r} is not a non-negative integer")
    return value


def _entry(name: str, info: object, data_len: int) -> TensorEntry:
    try:
        if not isinstance(info, dict):
            raise TypeError("not an object")
        dtype = info["dtype"]
        if not isinstance(dtype, str):
            raise TypeError("dtype is not a string")
        shape = tuple(_int(d) for d in info["shape"])
        start, end = (_int(x) for x in info["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
        raise SafetensorsHeaderError(f"safetensors file is corrupt: tensor {name!r} has an "
                                     f"invalid dtype, shape or offsets ({e})") from e
    if not start <= end <= data_len:
        raise SafetensorsHeaderError(f"safetensors file is corrupt: tensor {name!r} has "
                                     f"offsets [{start}, {end}] outside the {data_len}-byte "
                                     "data region")
    return TensorEntry(name, dtype, shape, start, end)


def parse_header(head: bytes | memoryview, size: int | None = None, *,
                 strict: bool = True) -> SafetensorsHeader:
    """Parse the header at the start of ``head`` (at least the first ``8 + n`` bytes of a
    file of ``size`` bytes, default ``len(head)``).

    Always checked: the header length, a JSON object, every entry's dtype, shape and
    offsets inside the data region, and no two tensors overlapping. ``strict`` also refuses
    an unknown dtype, a size that disagrees with dtype and shape, and a data region that the
    tensors do not end exactly at (truncated or trailing bytes); the delta engine reads
    such entries as opaque bytes instead. Raises SafetensorsHeaderError."""
    size = len(head) if size is None else size
    if len(head) < 8:
        raise SafetensorsHeaderError(NOT_SAFETENSORS.format("shorter than 8 bytes"))
    (n,) = struct.unpack("<Q", bytes(head[:8]))
    if n > min(MAX_HEADER, size - 8) or len(head) < 8 + n:
        raise SafetensorsHeaderError(NOT_SAFETENSORS.format(
            "the header length is out of range (a truncated file?)"))
    try:
        header = json.loads(bytes(head[8:8 + n]))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SafetensorsHeaderError(NOT_SAFETENSORS.format(f"the header is not JSON ({e})")
                                     ) from e
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(NOT_SAFETENSORS.format("the header is not an object"))
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise SafetensorsHeaderError("safetensors file is corrupt: __metadata__ is not an "
                                     "object")
    data_len = size - 8 - n
    tensors = [_entry(name, info, data_len) for name, info in header.items()]
    _check_overlaps(tensors)
    if strict:
        _check_strict(tensors, data_len)
    return SafetensorsHeader(n, tensors, {str(k): str(v) for k, v in meta.items()})


def _check_overlaps(tensors: list[TensorEntry]) -> None:
    pos, prev = 0, ""
    for t in sorted((t for t in tensors if t.nbytes), key=lambda t: t.start):
        if t.start < pos:
            raise SafetensorsHeaderError(f"safetensors file is corrupt: tensors {prev!r} and "
                                         f"{t.name!r} overlap")
        pos, prev = t.end, t.name


def _check_strict(tensors: list[TensorEntry], data_len: int) -> None:
    for t in tensors:
        if t.expected_nbytes != t.nbytes:
            raise SafetensorsHeaderError(
                f"safetensors file is corrupt: tensor {t.name!r} has an invalid dtype, shape "
                f"or offsets ({t.dtype} {list(t.shape)} in {t.nbytes} bytes)")
    if max((t.end for t in tensors), default=0) != data_len:
        raise SafetensorsHeaderError("safetensors file is truncated or has trailing bytes")


def read_header(path: Path, *, strict: bool = True) -> SafetensorsHeader:
    """The header of the file at ``path``; reads only the header's bytes."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            if n <= min(MAX_HEADER, size - 8):
                head += f.read(n)
    return parse_header(head, size, strict=strict)
