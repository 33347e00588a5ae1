"""Split model files into segments: tensors (chunked per tensor) and the bytes between.

Segments cover a file contiguously and in order, so concatenating them gives back the
original bytes exactly. Supported: safetensors, ONNX (initializers with ``raw_data``;
ONNX files are parsed from the protobuf wire format, without the onnx package), and any
other file as one raw byte segment.
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
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32",
               13: "uint64", 16: "bfloat16"}


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


def safetensors_segments(data: bytes | memoryview) -> list[Segment]:
    if len(data) < 8:
        raise FormatError("safetensors file shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > MAX_HEADER or 8 + n > len(data):
        raise FormatError("safetensors header length is out of range (truncated file?)")
    try:
        header = json.loads(bytes(data[8:8 + n]))
    except ValueError as e:
        raise FormatError(f"safetensors header is not JSON: {e}") from e
    base, tensors = 8 + n, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            tensors.append(Segment(name, base + int(start), int(end) - int(start),
                                   ST_DTYPES.get(info["dtype"], "bytes"),
                                   tuple(int(d) for d in info["shape"])))
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"safetensors entry {name!r} is malformed: {e}") from e
    return _fill(tensors, len(data))


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise FormatError("ONNX protobuf varint runs past its message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, pos: int, end: int):
    """Yield (field number, wire type, value start, value end or varint value)."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos, end)
            yield field, wire, val, pos
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise FormatError("ONNX protobuf field runs past its message (truncated?)")
            yield field, wire, pos, pos + n
            pos += n
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise FormatError("ONNX protobuf fixed field runs past its message")
            yield field, wire, pos, pos + width
            pos += width
        else:
            raise FormatError(f"ONNX protobuf wire type {wire} is not supported")


def _tensor(buf: memoryview, start: int, end: int) -> Segment | None:
    name, dtype, dims, raw = "", "bytes", [], None
    for field, wire, a, b in _fields(buf, start, end):
        if field == 1 and wire == 0:
            dims.append(a)
        elif field == 1 and wire == 2:
            p = a
            while p < b:
                d, p = _varint(buf, p, b)
                dims.append(d)
        elif field == 2 and wire == 0:
            dtype = ONNX_DTYPES.get(a, "bytes")
        elif field == 8 and wire == 2:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
        elif field == 9 and wire == 2:
            raw = (a, b)
    if raw is None or not name or raw[1] == raw[0]:
        return None
    return Segment(name, raw[0], raw[1] - raw[0], dtype, tuple(dims))


def onnx_segments(data: bytes | memoryview) -> list[Segment]:
    buf = memoryview(data)
    tensors: list[Segment] = []
    for field, wire, a, b in _fields(buf, 0, len(buf)):
        if field == 7 and wire == 2:  # ModelProto.graph
            for gf, gw, ga, gb in _fields(buf, a, b):
                if gf == 5 and gw == 2:  # GraphProto.initializer
                    seg = _tensor(buf, ga, gb)
                    if seg is not None:
                        tensors.append(seg)
    if not tensors:
        raise FormatError("no ONNX initializers with raw_data found")
    return _fill(tensors, len(buf))


def detect_format(name: str, head: bytes) -> str:
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".onnx"):
        return "onnx"
    return "raw"


def segments(fmt: str, data: bytes | memoryview) -> list[Segment]:
    if fmt == "safetensors":
        return safetensors_segments(data)
    if fmt == "onnx":
        return onnx_segments(data)
    return [Segment("", 0, len(data))] if len(data) else []
