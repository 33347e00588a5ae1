"""Signed, tensor-aware incremental weight updates (torch-free; the edge agent uses it).

    m = build_manifest(Path("v2.onnx"), model="resnet18", version=2)
    delta, stats = diff(Path("v1.onnx"), Path("v2.onnx"), private_key=key, version=2)
    apply_delta(Path("v1.onnx"), Path("v1-v2.delta"), Path("v2.onnx"), public_key=pub)

See docs/delta.md for the manifest and container formats.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hadmc_core.delta.apply import apply_delta, read_header
from hadmc_core.delta.encode import DeltaStats, encode
from hadmc_core.delta.errors import (
    BaseMismatchError,
    ChunkMismatchError,
    ExpiredError,
    FormatError,
    RollbackError,
    SignatureError,
    TruncatedDeltaError,
)
from hadmc_core.delta.keys import (
    SignedManifest,
    generate_keys,
    load_private,
    load_public,
    sign,
)
from hadmc_core.delta.manifest import DEFAULT_CHUNK, Manifest, build_manifest, hash_file

__all__ = [
    "BaseMismatchError", "ChunkMismatchError", "DEFAULT_CHUNK", "DeltaStats", "ExpiredError",
    "FormatError", "Manifest", "RollbackError", "SignatureError", "SignedManifest",
    "TruncatedDeltaError", "apply_delta", "build_manifest", "diff", "diff_from_manifest",
    "generate_keys", "hash_file", "load_private", "load_public", "read_header", "sign",
]


def _target(new: Path, private_key: Ed25519PrivateKey | None, model: str, version: int,
            ttl_seconds: int, chunk_size: int) -> SignedManifest:
    m = build_manifest(new, model=model, version=version, ttl_seconds=ttl_seconds,
                       chunk_size=chunk_size)
    return sign(m, private_key) if private_key is not None else SignedManifest(m)


def diff(old: Path, new: Path, private_key: Ed25519PrivateKey | None = None,
         model: str = "", version: int = 1, ttl_seconds: int = 30 * 24 * 3600,
         chunk_size: int = DEFAULT_CHUNK, level: int = 3) -> tuple[bytes, DeltaStats]:
    """Server side: both versions known. Returns the delta container and its statistics."""
    old, new = Path(old), Path(new)
    base = build_manifest(old, chunk_size=chunk_size, names=[new.name])
    target = _target(new, private_key, model, version, ttl_seconds, chunk_size)
    return encode(target, new, base, old_path=old, level=level)


def diff_from_manifest(device: Manifest, new: Path,
                       private_key: Ed25519PrivateKey | None = None, model: str = "",
                       version: int = 1, ttl_seconds: int = 30 * 24 * 3600,
                       level: int = 3) -> tuple[bytes, DeltaStats]:
    """Only the device's manifest known: send what it lacks by hash."""
    target = _target(Path(new), private_key, model, version, ttl_seconds, device.chunk_size)
    return encode(target, Path(new), device, old_path=None, level=level)
