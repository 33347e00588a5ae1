"""Uploaded weights are checked by hadmc_core's safetensors header parser in strict mode;
its errors become InvalidInputError (422 at the API)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from cloud_service.errors import InvalidInputError
from cloud_service.services.models import safetensors_header


def _file(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_tensors_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(save({"w": np.zeros((2, 3), np.float32)}, metadata={"arch": "densenet"}))
    assert safetensors_header(path) == ({"w": {"dtype": "F32", "shape": [2, 3]}},
                                        {"arch": "densenet"})


@pytest.mark.parametrize("data,words", [
    (b"\x80\x04\x95pickled", "not a safetensors file"),
    (_file({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, b"123456"),
     "trailing bytes"),
    (_file({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
            "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"123456"),
     "overlap"),
    (_file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4]}}, b"1234"),
     "invalid dtype, shape or offsets"),
], ids=["pickle", "trailing-bytes", "overlap", "size-disagrees"])
def test_refused_as_invalid_input(tmp_path: Path, data: bytes, words: str) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    with pytest.raises(InvalidInputError, match=words):
        safetensors_header(path)
