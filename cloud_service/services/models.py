"""Base models: validated uploads (never unpickled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_service.errors import InvalidInputError
from cloud_service.models import Model
from hadmc_core.safetensors_header import SafetensorsHeaderError, read_header


def safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse and check a safetensors header: {name: {dtype, shape}}, metadata."""
    try:
        header = read_header(path)
    except SafetensorsHeaderError as e:
        raise InvalidInputError(str(e)) from e
    tensors = {t.name: {"dtype": t.dtype, "shape": list(t.shape)} for t in header.tensors}
    return tensors, header.metadata


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


def refuse_external_data(proto: Any) -> None:
    """An uploaded ONNX model is one file: a tensor whose data lives elsewhere (``location``,
    wherever it points) would make the server read a file the client named."""
    import onnx

    from hadmc_core.sources.onnx_file import tensors

    for tensor in tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise InvalidInputError(
                f"tensor {tensor.name!r} keeps its data in an external file ({where[:200]!r}); "
                "upload a single-file ONNX model with every tensor inside it (onnx.save with "
                "save_as_external_data=False)")


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__


def inspect_onnx(path: Path) -> dict[str, Any]:
    """Check an uploaded ONNX file (read as data, never run) and describe it."""
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, ValueError, ...
        raise InvalidInputError(f"not a valid ONNX model: {_first_line(e)}") from e
    refuse_external_data(proto)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # ValidationError and the checker's C++ errors
        raise InvalidInputError(f"not a valid ONNX model: {_first_line(e)}") from e
    if not proto.graph.node:
        raise InvalidInputError("not a valid ONNX model: the graph is empty")
    meta = {p.key: p.value for p in proto.metadata_props}
    return {"opset": [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")],
            "inputs": [i.name for i in proto.graph.input], "nodes": len(proto.graph.node),
            "task": meta.get("hadmc.task") or "classify"}


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
