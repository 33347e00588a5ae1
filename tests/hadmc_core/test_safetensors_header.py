"""hadmc_core.safetensors_header: one parser with bounds checks for the service's upload
check (strict) and the delta engine (opaque bytes for entries it cannot type)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from hadmc_core.delta.errors import FormatError
from hadmc_core.delta.formats import safetensors_segments
from hadmc_core.safetensors_header import (
    SafetensorsHeaderError,
    parse_header,
    read_header,
)


def _file(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _t(dtype: str, shape: list, start: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def test_a_file_written_by_safetensors(tmp_path: Path) -> None:
    data = save({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                 "b": np.zeros(3, np.int64), "e": np.zeros((0, 4), np.float16)},
                metadata={"arch": "resnet18"})
    (tmp_path / "m.safetensors").write_bytes(data)
    h = read_header(tmp_path / "m.safetensors")
    assert h == parse_header(data)
    assert {t.name: (t.dtype, t.shape, t.nbytes) for t in h.tensors} == {
        "w": ("F32", (2, 3), 24), "b": ("I64", (3,), 24), "e": ("F16", (0, 4), 0)}
    assert h.metadata == {"arch": "resnet18"}
    w = next(t for t in h.tensors if t.name == "w")
    start = h.data_offset + w.start
    assert np.frombuffer(data[start:start + w.nbytes], np.float32).tolist() == list(range(6))


BROKEN = {
    "short": (b"\x01\x02", "shorter than 8 bytes"),
    "length-past-end": (struct.pack("<Q", 1000) + b"{}", "header length is out of range"),
    "not-json": (struct.pack("<Q", 5) + b"{nope", "not JSON"),
    "not-object": (_file([1, 2], b""), "not an object"),  # type: ignore[arg-type]
    "metadata-not-object": (_file({"__metadata__": [1]}, b""), "__metadata__"),
    "offsets-past-data": (_file({"a": _t("U8", [8], 0, 8)}, b"1234"), "outside"),
    "negative-offset": (_file({"a": _t("U8", [4], -4, 0)}, b"1234"), "invalid"),
    "string-offset": (_file({"a": _t("U8", [4], "0", 4)}, b"1234"), "invalid"),
    "missing-shape": (_file({"a": {"dtype": "U8", "data_offsets": [0, 4]}}, b"1234"),
                      "invalid"),
    "overlap": (_file({"a": _t("U8", [4], 0, 4), "b": _t("U8", [4], 2, 6)}, b"123456"),
                "overlap"),
}


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
@pytest.mark.parametrize("name", list(BROKEN))
def test_refused_in_both_modes(name: str, strict: bool) -> None:
    data, words = BROKEN[name]
    with pytest.raises(SafetensorsHeaderError, match=words):
        parse_header(data, strict=strict)


ODD = {
    "unknown-dtype": _file({"a": _t("Q7", [4], 0, 4)}, b"1234"),
    "size-disagrees": _file({"a": _t("F32", [4], 0, 4)}, b"1234"),
    "trailing-bytes": _file({"a": _t("U8", [4], 0, 4)}, b"123456"),
}


@pytest.mark.parametrize("name", list(ODD))
def test_odd_entries_are_refused_strictly_and_opaque_to_the_delta(name: str) -> None:
    with pytest.raises(SafetensorsHeaderError):
        parse_header(ODD[name])
    segments = safetensors_segments(ODD[name])
    tensor = next(s for s in segments if s.is_tensor)
    assert tensor.name == "a" and tensor.length == 4
    assert tensor.dtype == ("uint8" if name == "trailing-bytes" else "bytes")
    assert sum(s.length for s in segments) == len(ODD[name])


def test_the_delta_engine_raises_its_format_error() -> None:
    with pytest.raises(FormatError, match="overlap"):
        safetensors_segments(BROKEN["overlap"][0])
