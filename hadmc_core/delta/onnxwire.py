"""Find ONNX initializers by reading the protobuf wire format (no onnx package).

Only the fields needed to locate tensor bytes are read: ``ModelProto.graph`` (7),
``GraphProto.initializer`` (5) and, in each ``TensorProto``, ``dims`` (1), ``data_type``
(2), ``name`` (8), ``raw_data`` (9), ``external_data`` (13) and ``data_location`` (14).
Everything else stays opaque bytes. Tensor bytes are never touched, so a multi-GB model
costs only its protobuf structure.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from hadmc_core.delta.errors import FormatError
from hadmc_core.delta.formats import ITEMSIZE, Segment

ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
               7: "int64", 9: "bool", 10: "float16", 11: "float64", 12: "uint32",
               13: "uint64", 16: "bfloat16"}
EXTERNAL = 1


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


def fields(buf: memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
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


def safe_location(loc: str) -> str:
    """An external-data path must stay inside the model's directory."""
    p = PurePosixPath(loc)
    if (not loc or "\\" in loc or "\x00" in loc or p.is_absolute() or ".." in p.parts
            or str(p) != loc or loc.startswith("./")):
        raise FormatError(f"unsafe external data location {loc!r}: it must be a plain "
                          "relative path inside the model's directory")
    return loc


def _text(buf: memoryview, a: int, b: int) -> str:
    try:
        return bytes(buf[a:b]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"ONNX string field is not UTF-8: {e}") from e


def _entry(buf: memoryview, a: int, b: int) -> tuple[str, str]:
    key = value = ""
    for f, w, x, y in fields(buf, a, b):
        if w == 2 and f == 1:
            key = _text(buf, x, y)
        elif w == 2 and f == 2:
            value = _text(buf, x, y)
    return key, value


def metadata_props(buf: memoryview) -> dict[str, str]:
    """``ModelProto.metadata_props`` (field 14) as a dict, reading only the model's top
    level: the graph and its tensors are skipped whole."""
    return dict(_entry(buf, a, b) for f, w, a, b in fields(buf, 0, len(buf))
                if f == 14 and w == 2)


def _tensor(buf: memoryview, start: int, end: int) -> tuple[Segment | None, str]:
    """A segment for the tensor's bytes and its external file ('' when inside)."""
    name, dtype, dims, raw, ext, location = "", "bytes", [], None, {}, 0
    for field, wire, a, b in fields(buf, start, end):
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
            name = _text(buf, a, b)
        elif field == 9 and wire == 2:
            raw = (a, b)
        elif field == 13 and wire == 2:
            k, v = _entry(buf, a, b)
            ext[k] = v
        elif field == 14 and wire == 0:
            location = a
    if not name:
        return None, ""
    count = 1
    for d in dims:
        count *= d
    expected = count * ITEMSIZE.get(dtype, 0)
    if location == EXTERNAL:
        loc = safe_location(ext.get("location", ""))
        try:
            off = int(ext.get("offset", "0"))
            length = int(ext["length"]) if "length" in ext else expected
        except ValueError as e:
            raise FormatError(f"ONNX tensor {name!r}: bad external offset/length") from e
        if off < 0 or length <= 0:
            return None, ""
        seg = Segment(name, off, length, dtype if length == expected else "bytes", tuple(dims))
        return seg, loc
    if raw is None or raw[1] == raw[0]:
        return None, ""
    length = raw[1] - raw[0]
    return Segment(name, raw[0], length, dtype if length == expected else "bytes",
                   tuple(dims)), ""


def onnx_tensors(data: bytes | memoryview) -> tuple[list[Segment], dict[str, list[Segment]]]:
    """Initializers stored inside the file, and those in each external data file."""
    buf = memoryview(data)
    inside: list[Segment] = []
    external: dict[str, list[Segment]] = {}
    for field, wire, a, b in fields(buf, 0, len(buf)):
        if field == 7 and wire == 2:  # ModelProto.graph
            for gf, gw, ga, gb in fields(buf, a, b):
                if gf == 5 and gw == 2:  # GraphProto.initializer
                    seg, loc = _tensor(buf, ga, gb)
                    if seg is None:
                        continue
                    (external.setdefault(loc, []) if loc else inside).append(seg)
    if not inside and not external:
        raise FormatError("no ONNX initializers found (not an ONNX model?)")
    return inside, external
