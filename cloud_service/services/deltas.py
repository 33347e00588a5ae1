"""Deltas between versions, computed once and cached (artifact + ``deltas`` row).

The delta carries the target's *stored* signed manifest, so the manifest inside a delta is
byte-for-byte the one ``/manifest`` serves. When that manifest is signed again (near its
expiry) the cached delta is rebuilt on its next request.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud_service.db import utcnow
from cloud_service.errors import InvalidInputError
from cloud_service.models import Delta, ModelVersion
from cloud_service.services.publish import ensure_manifest
from cloud_service.storage import ArtifactStore

if TYPE_CHECKING:
    from hadmc_core.delta import DeltaStats
    from hadmc_core.delta.manifest import Manifest


def encode_delta(*, store: ArtifactStore, base: ModelVersion, target: ModelVersion,
                 signed_manifest: bytes) -> bytes:
    """The delta container that turns ``base``'s ONNX into ``target``'s."""
    from hadmc_core.delta import SignedManifest, build_manifest, encode

    signed = SignedManifest.from_bytes(signed_manifest)
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        old_dir, new_dir = Path(tmp) / "old", Path(tmp) / "new"
        old_dir.mkdir()
        new_dir.mkdir()
        old = store.link_as(base.onnx_hash, old_dir, "model.onnx")
        new = store.link_as(target.onnx_hash, new_dir, "model.onnx")
        base_manifest = build_manifest(old, chunk_size=signed.manifest.chunk_size)
        blob, _ = encode(signed, new, base_manifest, old_path=old)
    return blob


def _row(session: Session, base_id: int, target_id: int) -> Delta | None:
    return session.scalar(select(Delta).where(Delta.base_version_id == base_id,
                                              Delta.target_version_id == target_id))


def _current_format(store: ArtifactStore, digest: str) -> bool:
    """The stored delta exists and is in the container format this code writes (a delta
    cached by an older release is encoded again, not served to agents that refuse it)."""
    from hadmc_core.delta.codec import MAGIC

    if not store.exists(digest):
        return False
    with open(store.path(digest), "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def get_delta(*, session: Session, store: ArtifactStore, base: ModelVersion,
              target: ModelVersion, key: Ed25519PrivateKey) -> Delta:
    """The cached delta from ``base`` to ``target``, computed on first request."""
    manifest = ensure_manifest(session=session, store=store, version=target, key=key)
    row = _row(session, base.id, target.id)
    if row is not None and row.manifest_hash == target.manifest_hash \
            and _current_format(store, row.artifact_hash):
        return row
    blob = encode_delta(store=store, base=base, target=target, signed_manifest=manifest)
    digest, size = store.put_bytes(blob)  # content-addressed: a concurrent twin dedups
    assert target.manifest_hash is not None
    if row is not None:  # stale (manifest signed again, older format) or its file is gone
        row.artifact_hash, row.size, row.manifest_hash = digest, size, target.manifest_hash
        row.created_at = utcnow()
        session.flush()
        return row
    try:
        with session.begin_nested():
            row = Delta(base_version_id=base.id, target_version_id=target.id,
                        artifact_hash=digest, size=size, manifest_hash=target.manifest_hash)
            session.add(row)
    except IntegrityError:  # a concurrent first request stored it first
        row = _row(session, base.id, target.id)
        assert row is not None
    return row


def holder_manifest(body: bytes, *, chunk_size: int) -> Manifest:
    """The manifest a device sends of the files it holds (signed by any server, or bare;
    the signature is not checked: the device vouches for its own files, and the delta's
    prefix names the base files' hashes, which the device checks before using a byte).
    ``InvalidInputError`` unless it parses within the caps, its root hash matches its
    content, every file's hash is the one its chunk hashes and size give, and its chunk
    size is the target's (chunks are matched by hash at that size)."""
    from hadmc_core.delta import SignedManifest
    from hadmc_core.delta.manifest import FileHasher, chunks
    from hadmc_core.errors import DeltaError

    try:
        held = SignedManifest.from_bytes(body).manifest
    except DeltaError as e:
        raise InvalidInputError(f"the manifest of what the device holds is not usable: "
                                f"{e}") from e
    if held.chunk_size != chunk_size:
        raise InvalidInputError(f"the manifest's chunk_size is {held.chunk_size}; this "
                                f"version's is {chunk_size}: build the manifest of the held "
                                f"files with chunk_size={chunk_size}")
    hashers = [FileHasher() for _ in held.files]
    for fi, _seg, _i, digest, _start, length in chunks(held):
        hashers[fi].update(bytes.fromhex(digest), length)
    for f, h in zip(held.files, hashers, strict=True):
        if h.hexdigest() != f.blake3:
            raise InvalidInputError(f"the manifest's hash of {f.path} is not the one its "
                                    "chunk hashes give; send the manifest as built")
    return held


def delta_for_holder(*, session: Session, store: ArtifactStore, target: ModelVersion,
                     key: Ed25519PrivateKey, body: bytes) -> tuple[str, DeltaStats]:
    """A signed delta to ``target`` against the chunks a device's own manifest lists (any
    version, from any server: chunks are matched by hash). Stored in the artifact store
    (content-addressed, so the same request twice is stored once); its digest and stats.
    Like every delta it is never larger than the target compressed whole (``fallback``
    when nothing matched)."""
    from hadmc_core.delta import SignedManifest, encode

    signed = SignedManifest.from_bytes(
        ensure_manifest(session=session, store=store, version=target, key=key))
    held = holder_manifest(body, chunk_size=signed.manifest.chunk_size)
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        new = store.link_as(target.onnx_hash, Path(tmp), "model.onnx")
        blob, stats = encode(signed, new, held, old_path=None)
    digest, _ = store.put_bytes(blob)
    return digest, stats
