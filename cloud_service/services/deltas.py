"""Deltas between versions, computed once and cached (artifact + ``deltas`` row).

The delta carries the target's *stored* signed manifest, so the manifest inside a delta is
byte-for-byte the one ``/manifest`` serves. When that manifest is signed again (near its
expiry) the cached delta is rebuilt on its next request.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud_service.db import utcnow
from cloud_service.models import Delta, ModelVersion
from cloud_service.services.publish import ensure_manifest
from cloud_service.storage import ArtifactStore


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
