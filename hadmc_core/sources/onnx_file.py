"""Reading an ONNX file as data: checked, external data confined to the file's directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from hadmc_core.errors import InputFileError


def tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers (sparse ones too), node attributes, and
    those of subgraphs."""
    import onnx

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from tensors(g)


def check_external_data(model, path: Path) -> int:
    """Refuse external data outside the model's directory; returns how many tensors use it."""
    import onnx

    base = path.resolve().parent
    count = 0
    for tensor in tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        count += 1
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        parts = PurePosixPath(location.replace("\\", "/")).parts
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or PureWindowsPath(location).drive \
                or ".." in parts or not target.is_relative_to(base):
            raise InputFileError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                "model's directory; put the external data file next to the model")
        if not target.is_file():
            raise InputFileError(
                f"{path}: external data file {location!r} of tensor {tensor.name!r} is missing")
    return count


def read_onnx(path: Path):
    """The checked ModelProto of ``path`` with its external data loaded."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        raise InputFileError(f"{path} is not a readable ONNX model ({e})") from None
    if not model.graph.node:
        raise InputFileError(f"{path} is not a readable ONNX model (its graph has no nodes)")
    external = check_external_data(model, path)
    try:
        onnx.checker.check_model(str(path) if external else model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputFileError(f"{path} is not a valid ONNX model: {first}") from None
    if external:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.resolve().parent))
    return model
