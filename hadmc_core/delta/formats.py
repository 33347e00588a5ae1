"""Split model files into segments: tensors (chunked per tensor) and the bytes between.

Segments cover a file contiguously and in order, so concatenating them gives back the
original bytes exactly. Supported: safetensors, ONNX (see ``onnxwire``: initializers in
``raw_data`` or in external data files), and any other file as one raw byte segment.
"""

from __future__ import annotations

from dataclasses import dataclass

from hadmc_core.delta.errors import FormatError
from hadmc_core.safetensors_header import SafetensorsHeaderError, parse_header

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
    """The tensors of a safetensors file's bytes; an entry with an unknown dtype, or one
    whose size disagrees with its dtype and shape, is kept as opaque bytes."""
    try:
        header = parse_header(data, strict=False)
    except SafetensorsHeaderError as e:
        raise FormatError(str(e)) from e
    base, tensors = header.data_offset, []
    for t in header.tensors:
        dtype = ST_DTYPES.get(t.dtype, "bytes")
        if t.expected_nbytes != t.nbytes:
            dtype = "bytes"  # inconsistent entry: keep it as opaque bytes
        if t.nbytes:
            tensors.append(Segment(t.name, base + t.start, t.nbytes, dtype, t.shape))
    return _fill(tensors, len(data))


def detect_format(name: str, head: bytes) -> str:
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(".onnx"):
        return "onnx"
    return "raw"


def raw_segments(size: int) -> list[Segment]:
    return [Segment("", 0, size)] if size else []
