"""Signed manifests and deltas between versions, built with ``hadmc_core.delta``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_service.models import ModelVersion
from cloud_service.storage import ArtifactStore


def model_line(version: ModelVersion) -> str:
    return f"model-{version.model_id}"


def signed_manifest(*, store: ArtifactStore, version: ModelVersion,
                    key: Ed25519PrivateKey) -> bytes:
    from hadmc_core.delta import build_manifest, sign

    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        path = store.link_as(version.onnx_hash, Path(tmp), "model.onnx")
        m = build_manifest(path, model=model_line(version), version=version.number)
    return sign(m, key).to_bytes()


def make_delta(*, store: ArtifactStore, base: ModelVersion, target: ModelVersion,
               key: Ed25519PrivateKey) -> tuple[bytes, dict[str, Any]]:
    """The delta container that turns ``base``'s ONNX into ``target``'s, and its stats."""
    from hadmc_core.delta import diff

    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        old_dir, new_dir = Path(tmp) / "old", Path(tmp) / "new"
        old_dir.mkdir()
        new_dir.mkdir()
        old = store.link_as(base.onnx_hash, old_dir, "model.onnx")
        new = store.link_as(target.onnx_hash, new_dir, "model.onnx")
        blob, stats = diff(old, new, private_key=key, model=model_line(target),
                           version=target.number)
    return blob, {"target_bytes": stats.target_bytes, "delta_bytes": stats.delta_bytes,
                  "full_zstd_bytes": stats.full_zstd_bytes}
