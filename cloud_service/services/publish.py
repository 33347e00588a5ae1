"""Files computed once per version: the signed manifest and the probe (``.npz``).

Both are stored in the artifact store and their hashes on the version row. Versions created
before these existed get them on first request. Concurrent first requests both compute, and
a compare-and-set ``UPDATE`` keeps the first one stored, so every reader sees the same bytes.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update
from sqlalchemy.orm import Session

from cloud_service.errors import ConflictError, InvalidInputError
from cloud_service.models import ModelVersion
from cloud_service.storage import ArtifactStore

log = logging.getLogger(__name__)
#: A stored manifest is signed again when it expires within this many seconds.
RESIGN_BEFORE_SECONDS = 7 * 86400
PROBE_SEED, PROBE_BATCH, PROBE_ATOL, PROBE_RTOL = 0, 2, 1e-3, 1e-3
PROBE_KEYS = {"inputs", "outputs", "atol", "rtol"}
MAX_PROBE_BYTES = 256 * 1024 * 1024  # uncompressed, all arrays together


def model_line(version: ModelVersion) -> str:
    return f"model-{version.model_id}"


def _store_hash(session: Session, version: ModelVersion, column: str, old: str | None,
                new: str) -> str:
    """Set ``version.<column>`` from ``old`` to ``new`` unless another request already did;
    returns the hash now stored."""
    col = getattr(ModelVersion, column)
    cond = col.is_(None) if old is None else col == old
    res = session.execute(update(ModelVersion).where(ModelVersion.id == version.id, cond)
                          .values({column: new}).execution_options(synchronize_session=False))
    if res.rowcount == 0:  # type: ignore[attr-defined]
        session.refresh(version, [column])  # the concurrent winner's value
    else:
        setattr(version, column, new)
    return getattr(version, column) or new


def _expiring(data: bytes, now: float) -> bool:
    expires = json.loads(data)["manifest"]["expires"]
    return bool(expires) and expires - now < RESIGN_BEFORE_SECONDS


def build_signed_manifest(*, store: ArtifactStore, version: ModelVersion,
                          key: Ed25519PrivateKey, now: float | None = None) -> bytes:
    from hadmc_core.delta import build_manifest, sign

    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        path = store.link_as(version.onnx_hash, Path(tmp), "model.onnx")
        m = build_manifest(path, model=model_line(version), version=version.number,
                           now=int(time.time() if now is None else now))
    return sign(m, key).to_bytes()


def ensure_manifest(*, session: Session, store: ArtifactStore, version: ModelVersion,
                    key: Ed25519PrivateKey, now: float | None = None) -> bytes:
    """The version's stored signed manifest: computed once, signed again near expiry."""
    now = time.time() if now is None else now
    old = version.manifest_hash
    if old is not None and store.exists(old):
        data = store.path(old).read_bytes()
        if not _expiring(data, now):
            return data
    digest, _ = store.put_bytes(build_signed_manifest(store=store, version=version, key=key,
                                                      now=now))
    return store.path(_store_hash(session, version, "manifest_hash", old, digest)).read_bytes()


def make_probe(onnx_path: Path) -> bytes:
    """Seeded random inputs shaped like the graph's first input (batch 2 when the batch
    dimension is free) and the outputs ONNX Runtime gives here, as an ``.npz``. A detector
    (metadata ``hadmc.task`` = ``detect``) gets what it is built for: one image (its
    detections carry no image index) with pixels uniform in 0..1."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        first = sess.get_inputs()[0]
        if len(sess.get_inputs()) != 1 or first.type != "tensor(float)":
            raise InvalidInputError("the graph must have exactly one float32 input for the "
                                    "server to make a probe; upload one with PUT .../probe")
        detector = sess.get_modelmeta().custom_metadata_map.get("hadmc.task") == "detect"
        batch = 1 if detector else PROBE_BATCH
        shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1)
                 for i, d in enumerate(first.shape)]
        rng = np.random.default_rng(PROBE_SEED)
        x = (rng.random(shape) if detector else rng.standard_normal(shape)).astype(np.float32)
        y = np.asarray(sess.run(None, {first.name: x})[0])
    except InvalidInputError:
        raise
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... kinds
        raise InvalidInputError(f"ONNX Runtime cannot run this model: "
                                f"{str(e).splitlines()[0][:300]}") from e
    buf = io.BytesIO()
    np.savez(buf, inputs=x, outputs=y, atol=np.float64(PROBE_ATOL), rtol=np.float64(PROBE_RTOL))
    return buf.getvalue()


def ensure_probe(*, session: Session, store: ArtifactStore, version: ModelVersion) -> str:
    """The hash of the version's probe, computed on first use (409 if it cannot be)."""
    if version.probe_hash is not None:
        return version.probe_hash
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        path = store.link_as(version.onnx_hash, Path(tmp), "model.onnx")
        try:
            data = make_probe(path)
        except InvalidInputError as e:
            raise ConflictError(f"version {version.id} has no probe and the server cannot "
                                f"make one ({e}); upload one with PUT "
                                f"/v1/versions/{version.id}/probe") from e
    digest, _ = store.put_bytes(data)
    return _store_hash(session, version, "probe_hash", None, digest)


def publish(*, session: Session, store: ArtifactStore, version: ModelVersion,
            key: Ed25519PrivateKey) -> None:
    """Compute and store the manifest and (when the graph allows) the probe."""
    ensure_manifest(session=session, store=store, version=version, key=key)
    try:
        ensure_probe(session=session, store=store, version=version)
    except ConflictError as e:
        log.warning("version %s published without a probe: %s", version.id, e,
                    extra={"version_id": version.id})


def _member_sizes(path: Path) -> int:
    """Inflated size of the probe's arrays, from their headers (numpy allocates what a
    header declares, so each is checked against what its member holds)."""
    from hadmc_core.data.npzfile import read_headers
    from hadmc_core.errors import DatasetError

    try:
        members = read_headers(path, "the probe")
    except DatasetError as e:
        raise InvalidInputError(str(e)) from e
    if set(members) != PROBE_KEYS:
        raise InvalidInputError(f"a probe holds exactly the arrays "
                                f"{', '.join(sorted(PROBE_KEYS))}; got {sorted(members)[:10]}")
    return sum(m.file_size for m in members.values())


def validate_probe(path: Path) -> dict[str, Any]:
    """Check a probe upload without unpickling: keys, dtypes, shapes, sizes."""
    if _member_sizes(path) > MAX_PROBE_BYTES:
        raise InvalidInputError(f"the probe's arrays are over {MAX_PROBE_BYTES >> 20} MiB")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in PROBE_KEYS}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise InvalidInputError(f"not a valid .npz without pickles: {e}") from e
    x, y = arrays["inputs"], arrays["outputs"]
    if x.dtype != np.float32 or x.ndim < 1 or x.shape[0] < 1:
        raise InvalidInputError("probe `inputs` must be float32 with a batch dimension first")
    if y.dtype.kind not in "fiub" or y.ndim < 1 or y.shape[0] != x.shape[0]:
        raise InvalidInputError("probe `outputs` must be numeric with the same batch size as "
                                "`inputs`")
    for name in ("atol", "rtol"):
        v = arrays[name]
        if v.shape != () or v.dtype.kind != "f" or not np.isfinite(v) or v < 0:
            raise InvalidInputError(f"probe `{name}` must be a finite float scalar >= 0")
    return {"inputs": list(x.shape), "outputs": list(y.shape)}
