"""Chunk encodings shared by the encoder and the applier, and the delta container layout.

Container: ``MAGIC | u32 header length | header (canonical JSON) | op table | payload``.
The op table has one 13-byte entry per chunk of the target file, in manifest order:
``u8 kind | u64 base offset | u32 payload length``. Kinds:

- REF: copy the chunk from the base file at the offset (same hash, anywhere in the base);
- XOR: float words XOR the base chunk at the offset, byte planes split, then zstd;
- ADD: bytes minus the base chunk at the offset (mod 256; integer/INT8 tensors), zstd;
- RAW: zstd of the chunk; RAWP: byte planes split, then zstd;
- FULL (alone): the whole target file as one zstd stream (the never-bigger fallback).
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = b"HDMCDLT1"
OP = struct.Struct("<BQI")
REF, XOR, ADD, RAW, RAWP, FULL = 0, 1, 2, 3, 4, 9
KIND_NAMES = {REF: "ref", XOR: "xor", ADD: "add", RAW: "raw", RAWP: "raw-planes", FULL: "full"}
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
            "int16": 2, "uint16": 2, "uint32": 4, "uint64": 8}
FLOATS = {"float64", "float32", "float16", "bfloat16"}
INTS8 = {"int8", "uint8", "bool"}


def planes(data: bytes, itemsize: int) -> bytes:
    """Group byte k of every word together (the high bytes of floats compress well)."""
    n = len(data) // itemsize * itemsize
    arr = np.frombuffer(data, np.uint8, count=n).reshape(-1, itemsize)
    return arr.T.tobytes() + data[n:]


def unplanes(data: bytes, itemsize: int, length: int) -> bytes:
    n = length // itemsize * itemsize
    arr = np.frombuffer(data, np.uint8, count=n).reshape(itemsize, -1)
    return arr.T.tobytes() + data[n:length]


def xor(a: bytes, b: bytes) -> bytes:
    return (np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).tobytes()


def sub(a: bytes, b: bytes) -> bytes:
    return (np.frombuffer(a, np.uint8) - np.frombuffer(b, np.uint8)).astype(np.uint8).tobytes()


def add(a: bytes, b: bytes) -> bytes:
    return (np.frombuffer(a, np.uint8) + np.frombuffer(b, np.uint8)).astype(np.uint8).tobytes()
