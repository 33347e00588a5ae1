"""Signed, tensor-aware incremental weight updates (torch-free; the edge agent uses it).

    m = build_manifest(Path("v2.onnx"), model="resnet18", version=2)
    delta, stats = diff(Path("v1.onnx"), Path("v2.onnx"), private_key=key, version=2)
    apply_delta(Path("v1.onnx"), Path("v1-v2.delta"), Path("v2.onnx"), public_key=pub)

See docs/delta.md for the manifest and container formats.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hadmc_core.delta.apply import apply_delta
from hadmc_core.delta.build import build_manifest, hash_file
from hadmc_core.delta.container import Header, read_body, read_prefix
from hadmc_core.delta.encode import DeltaStats, encode
from hadmc_core.delta.errors import (
    BaseMismatchError,
    ChunkMismatchError,
    ExpiredError,
    FormatError,
    KeyFileError,
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
from hadmc_core.delta.manifest import DEFAULT_CHUNK, Manifest

__all__ = [
    "BaseMismatchError", "ChunkMismatchError", "DEFAULT_CHUNK", "DeltaStats", "ExpiredError",
    "FormatError", "Header", "KeyFileError", "Manifest", "RollbackError", "SignatureError",
    "SignedManifest", "TruncatedDeltaError", "apply_delta", "build_manifest", "diff",
    "diff_from_manifest", "encode", "generate_keys", "hash_file", "load_private",
    "load_public", "read_body", "read_prefix", "sign", "sign_manifest",
]

TTL = 30 * 24 * 3600


def sign_manifest(m: Manifest, private_key: Ed25519PrivateKey | None) -> SignedManifest:
    """Sign with the key, or wrap unsigned (hashes still verified) when it is None."""
    return sign(m, private_key) if private_key is not None else SignedManifest(m)


def diff(old: Path, new: Path, private_key: Ed25519PrivateKey | None = None,
         model: str = "", version: int = 1, ttl_seconds: int = TTL,
         chunk_size: int = DEFAULT_CHUNK, level: int = 3) -> tuple[bytes, DeltaStats]:
    """Server side, both versions known: the delta container that turns OLD into NEW (and
    their external data files, if any) and its statistics."""
    old, new = Path(old), Path(new)
    base = build_manifest(old, chunk_size=chunk_size)
    m = build_manifest(new, model=model, version=version, ttl_seconds=ttl_seconds,
                       chunk_size=chunk_size)
    return encode(sign_manifest(m, private_key), new, base, old_path=old, level=level)


def diff_from_manifest(device: Manifest, new: Path,
                       private_key: Ed25519PrivateKey | None = None, model: str = "",
                       version: int = 1, ttl_seconds: int = TTL,
                       level: int = 3) -> tuple[bytes, DeltaStats]:
    """Only the device's manifest known: references for the chunks it has (by hash,
    anywhere), compressed bytes for the rest."""
    m = build_manifest(Path(new), model=model, version=version, ttl_seconds=ttl_seconds,
                       chunk_size=device.chunk_size)
    return encode(sign_manifest(m, private_key), Path(new), device, old_path=None,
                  level=level)
