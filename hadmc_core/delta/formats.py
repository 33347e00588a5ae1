"""Split model files into segments: tensors (chunked per tensor) and the bytes between.

Segments cover a file contiguously and in order, so concatenating them gives back the
original bytes exactly. Supported: safetensors, ONNX (see ``onnxwire``: initializers in
``raw_data`` or in external data files), and any other file as one raw byte segment.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from hadmc_core.delta.errors import FormatError

MAX_HEADER = 100 * 1024 * 1024
ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
             "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
             "BOOL": "bool", "U16": "uint16", "U32": "uint32", "U64": "uint64"}
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
            "int16": 2, "uint16": 2, "uint32": 4, "uint64": 8, "int8": 1, "uint8": 1,
            "bool": 1}
FORMATS = ("safetensors", "onnx", "onnx-external", "raw")


@dataclass
class Segment:
    name: str            # tensor name, or "" for bytes between tensors
    offset: int
    length: int
    dtype: str = "bytes"
    shape: tuple[int, ...] = ()

    @property
    def is_tensor(self) -> bool:
        return bool(self.name)


def _fill(segments: list[Segment], size: int) -> list[Segment]:
    """Sort tensor segments and add the byte runs between them."""
    out, pos = [], 0
    for seg in sorted(segments, key=lambda s: s.offset):
        if seg.offset < pos or seg.offset + seg.length > size:
            raise FormatError(f"tensor {seg.name!r} overlaps another or runs past the file")
        if seg.offset > pos:
            out.append(Segment("", pos, seg.offset - pos))
        out.append(seg)
        pos = seg.offset + seg.length
    if pos < size:
        out.append(Segment("", pos, size - pos))
    return out


def fill(segments: list[Segment], size: int) -> list[Segment]:
    return _fill(segments, size)


def safetensors_segments(data: bytes | memoryview) -> list[Segment]:
    if len(data) < 8:
        raise FormatError("safetensors file shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > MAX_HEADER or 8 + n > len(data):
        raise FormatError("safetensors header length is out of range (truncated file?)")
    try:
        header = json.loads(bytes(data[8:8 + n]))
        items = header.items()
    except (ValueError, RecursionError, AttributeError) as e:
        raise FormatError(f"safetensors header is not a JSON object: {e}") from e
    base, tensors = 8 + n, []
    for name, info in items:
        if name == "__metadata__":
            continue
        try:
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
            dtype = ST_DTYPES.get(info["dtype"], "bytes")
            count = 1
            for d in shape:
                count *= d
            if count * ITEMSIZE.get(dtype, 0) != end - start:
                dtype = "bytes"  # inconsistent entry: keep it as opaque bytes
            if end > start:
                tensors.append(Segment(name, base + start, end - start, dtype, shape))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FormatError(f"safetensors entry {name!r} is malformed: {e}") from e
    return _fill(tensors, len(data))


def detect_format(name: str, head: bytes) -> str:
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".onnx"):
        return "onnx"
    return "raw"


def raw_segments(size: int) -> list[Segment]:
    return [Segment("", 0, size)] if size else []
