"""Base models: validated uploads (never unpickled)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_service.errors import InvalidInputError
from cloud_service.models import Model

MAX_HEADER = 100 * 1024 * 1024
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse and check a safetensors header: {name: {dtype, shape}}, metadata."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InvalidInputError("not a safetensors file: shorter than 8 bytes")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER, size - 8):
            raise InvalidInputError("not a safetensors file: bad header length "
                                    "(pickled PyTorch checkpoints are not accepted; "
                                    "save with safetensors.torch.save_file)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInputError(f"not a safetensors file: header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise InvalidInputError("not a safetensors file: header is not an object")
    meta = header.pop("__metadata__", None) or {}
    data_len, end_max = size - 8 - n, 0
    tensors = {}
    for name, t in header.items():
        try:
            dtype, shape, (start, end) = t["dtype"], list(t["shape"]), t["data_offsets"]
            count = 1
            for d in shape:
                count *= int(d)
            ok = (dtype in DTYPE_BYTES and 0 <= start <= end <= data_len
                  and end - start == count * DTYPE_BYTES[dtype])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise InvalidInputError(f"safetensors file is corrupt: tensor {name!r} has an "
                                    "invalid dtype, shape or offsets")
        end_max = max(end_max, end)
        tensors[name] = {"dtype": dtype, "shape": shape}
    if end_max != data_len:
        raise InvalidInputError("safetensors file is truncated or has trailing bytes")
    return tensors, {str(k): str(v) for k, v in meta.items()}


def check_against_arch(tensors: dict[str, Any], spec: Any) -> None:
    from hadmc_core.models import build_model

    own = {k: list(v.shape) for k, v in build_model(spec).state_dict().items()}
    wrong = sorted(k for k in own if k in tensors and tensors[k]["shape"] != own[k])
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if wrong or missing or extra:
        raise InvalidInputError(
            f"weights do not fit architecture {spec.arch}: {len(wrong)} shape mismatches "
            f"{wrong[:5]}, {len(missing)} missing {missing[:5]}, {len(extra)} unexpected "
            f"{extra[:5]}; check arch, stem, width, in_channels and num_classes")


def inspect_onnx(path: Path) -> dict[str, Any]:
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:  # onnx raises DecodeError, ValidationError, ValueError, ...
        raise InvalidInputError(f"not a valid ONNX model: {str(e).splitlines()[0][:300]}") \
            from e
    if not proto.graph.node:
        raise InvalidInputError("not a valid ONNX model: the graph is empty")
    return {"opset": [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")],
            "inputs": [i.name for i in proto.graph.input], "nodes": len(proto.graph.node)}


def validate_upload(path: Path, *, fmt: str, arch: dict[str, Any] | None
                    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Return (arch spec dict, details) for an uploaded file; InvalidInputError if bad."""
    if fmt == "onnx":
        return None, inspect_onnx(path)
    from hadmc_core.errors import HadmcError
    from hadmc_core.models import ARCHITECTURES, ArchSpec, spec_from_metadata

    tensors, meta = safetensors_header(path)
    try:
        spec = ArchSpec(**arch) if arch and arch.get("arch") else spec_from_metadata(meta)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"invalid architecture: {e}") from e
    if spec is None:
        raise InvalidInputError("the weights carry no architecture metadata; pass arch= "
                                f"(one of {', '.join(sorted(ARCHITECTURES))})")
    if spec.arch not in ARCHITECTURES:
        raise InvalidInputError(f"unknown architecture {spec.arch!r}; valid: "
                                f"{', '.join(sorted(ARCHITECTURES))}")
    try:
        check_against_arch(tensors, spec)
    except HadmcError as e:
        raise InvalidInputError(str(e)) from e
    return spec.to_dict(), {"tensors": len(tensors)}


def create_model(*, session: Session, name: str, fmt: str, arch: dict[str, Any] | None,
                 digest: str, size: int, details: dict[str, Any], owner_id: int | None) -> Model:
    row = Model(name=name, format=fmt, arch=arch, artifact_hash=digest, size_bytes=size,
                details=details, owner_id=owner_id)
    session.add(row)
    session.flush()
    return row


def get_model(*, session: Session, model_id: int) -> Model | None:
    return session.get(Model, model_id)


def list_models(*, session: Session, offset: int, limit: int) -> tuple[list[Model], int]:
    rows = session.scalars(select(Model).order_by(Model.id.desc()).offset(offset).limit(limit))
    return list(rows), session.scalar(select(func.count(Model.id))) or 0
