"""Trust checks, all against the server key pinned at enrollment: signed manifests (signature,
expiry, anti-rollback floor), files against a manifest, and signed rollback orders."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.errors import ManifestRejected, RollbackOrderError, VerifyError
from hadmc_core.delta import SignedManifest
from hadmc_core.delta.build import file_entries
from hadmc_core.delta.errors import DeltaError, ExpiredError, RollbackError

MAX_MANIFEST_BYTES = 32 << 20


def read_manifest(data: bytes, key: Ed25519PublicKey, *, floor: int | None,
                  now: float | None = None) -> SignedManifest:
    """Parse a signed manifest and refuse it unless it is signed by the pinned key, not
    expired, and (when ``floor`` is given) not below the highest version accepted."""
    try:
        signed = SignedManifest.from_bytes(data)
        signed.verify(key)
        signed.manifest.check_fresh(now, floor)
    except ExpiredError as e:
        raise ManifestRejected(f"expired manifest: {e}") from e
    except RollbackError as e:
        raise ManifestRejected(f"version below the anti-rollback floor: {e}") from e
    except DeltaError as e:
        raise ManifestRejected(f"manifest refused: {e}") from e
    return signed


def check_files(directory: Path, signed: SignedManifest) -> None:
    """The model file (and its external data files) in ``directory`` hash, chunk by chunk,
    to exactly the files, sizes and BLAKE3 tree hashes the signed manifest lists."""
    m = signed.manifest
    first = m.files[0].path
    try:
        got = file_entries(directory / first, first, m.chunk_size)
    except OSError as e:
        raise VerifyError(f"{first}: unreadable ({e.strerror or e})") from e
    except DeltaError as e:
        raise VerifyError(f"{first}: {e}") from e
    have = {f.path: (f.size, f.blake3) for f in got}
    for f in m.files:
        if f.path not in have:
            raise VerifyError(f"{f.path}: missing")
        size, digest = have[f.path]
        if size != f.size:
            raise VerifyError(f"{f.path}: {size} bytes, the signed manifest says {f.size}")
        if digest != f.blake3:
            raise VerifyError(f"{f.path}: BLAKE3 differs from the signed manifest")
    if len(have) != len(m.files):
        raise VerifyError(f"{first} refers to files the signed manifest does not list")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def check_rollback_order(ro: Any, key: Ed25519PublicKey, *, device_id: int, model: str,
                         version: int, version_id: int, now: float | None = None) -> None:
    """Accept only an order signed by the pinned key that names this device, the model
    line and exactly this ``version`` and ``version_id``, not expired (docs/protocol.md)."""
    if not isinstance(ro, dict) or not isinstance(ro.get("order"), dict):
        raise RollbackOrderError("rollback order is malformed: no order object")
    order, sig = ro["order"], ro.get("signature")
    if not isinstance(sig, str):
        raise RollbackOrderError("rollback order has no signature")
    try:
        key.verify(bytes.fromhex(sig), canonical(order))
    except (InvalidSignature, ValueError) as e:
        raise RollbackOrderError("rollback order signature does not verify against the "
                                 "pinned server key; ignoring it") from e
    want = {"kind": "rollback", "device_id": device_id, "model": model, "version": version,
            "version_id": version_id}
    wrong = [k for k, v in want.items() if order.get(k) != v]
    if wrong:
        raise RollbackOrderError(f"rollback order does not match ({', '.join(wrong)}): it "
                                 f"names {', '.join(f'{k}={order.get(k)!r}' for k in wrong)}")
    expires = order.get("expires")
    now = time.time() if now is None else now
    if not isinstance(expires, int | float) or now > expires:
        raise RollbackOrderError(f"rollback order expired (expires={expires!r})")
