"""Write small ONNX models as protobuf bytes, without the ``onnx`` package (torch-free).

Enough of the ONNX schema for one-layer timing graphs and tiny test models: nodes with
int / ints / float attributes, initializers as ``raw_data``, inputs and outputs with an
element type and an optional static shape. Field numbers are those of ``onnx.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

#: TensorProto.DataType values for the numpy dtypes we write.
DTYPES = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3,
          np.dtype(np.int32): 6, np.dtype(np.int64): 7}
FLOAT = 1


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode())


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto with dims, data_type, name and little-endian raw_data."""
    a = np.ascontiguousarray(array)
    if a.dtype not in DTYPES:
        raise ValueError(f"unsupported initializer dtype {a.dtype}")
    body = b"".join(_int(1, d) for d in a.shape)
    body += _int(2, DTYPES[a.dtype]) + _str(8, name)
    return body + _bytes(9, a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def _attribute(name: str, value: int | float | Sequence[int]) -> bytes:
    body = _str(1, name)
    if isinstance(value, bool | int):
        return body + _int(3, int(value)) + _int(20, 2)          # INT
    if isinstance(value, float):
        return body + _key(2, 5) + struct.pack("<f", value) + _int(20, 1)  # FLOAT
    return body + b"".join(_int(8, int(v)) for v in value) + _int(20, 7)  # INTS


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str = "",
         **attrs: int | float | Sequence[int]) -> bytes:
    body = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    body += _str(3, name or f"{op_type}_{outputs[0]}") + _str(4, op_type)
    return body + b"".join(_bytes(5, _attribute(k, v)) for k, v in sorted(attrs.items()))


def value_info(name: str, shape: Sequence[int | str] | None = None,
               elem_type: int = FLOAT) -> bytes:
    tensor_type = _int(1, elem_type)
    if shape is not None:
        dims = b"".join(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d))
                        for d in shape)
        tensor_type += _bytes(2, dims)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(nodes: Sequence[bytes], inputs: Sequence[bytes], outputs: Sequence[bytes],
          initializers: Sequence[bytes] = (), opset: int = 17, ir_version: int = 8,
          name: str = "graph") -> bytes:
    """ModelProto bytes: one graph, the default-domain opset."""
    graph = b"".join(_bytes(1, n) for n in nodes) + _str(2, name)
    graph += b"".join(_bytes(5, t) for t in initializers)
    graph += b"".join(_bytes(11, v) for v in inputs) + b"".join(_bytes(12, v) for v in outputs)
    opset_id = _str(1, "") + _int(2, opset)
    return (_int(1, ir_version) + _str(2, "hadmc") + _bytes(7, graph)
            + _bytes(8, opset_id))


def mlp(widths: Sequence[int], seed: int = 0, scale: float = 0.05) -> bytes:
    """x[N, widths[0]] → (MatMul → Relu) … → MatMul → y[N, widths[-1]], weights drawn from
    ``seed``. Versions of one model line share ``widths``; more or wider hidden layers give
    the same interface at a higher cost."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        w = (rng.standard_normal((a, b)) * scale * np.sqrt(64 / a)).astype(np.float32)
        inits.append(tensor(f"w{i}", w))
        last = i == len(widths) - 2
        nodes.append(node("MatMul", [prev, f"w{i}"], ["y" if last else f"h{i}"]))
        if not last:
            nodes.append(node("Relu", [f"h{i}"], [f"r{i}"]))
            prev = f"r{i}"
    return model(nodes, [value_info("x", ["N", widths[0]])],
                 [value_info("y", ["N", widths[-1]])], inits)
