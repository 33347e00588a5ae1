"""The manifest-signing key when several server processes start at once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from cryptography.hazmat.primitives import serialization


def _start(path: str, barrier, out) -> None:
    from cloud_service.security import ensure_signing_key, public_key_pem

    barrier.wait()
    try:
        out.put(public_key_pem(ensure_signing_key(Path(path))))
    except Exception as e:  # reported to the test, which fails with it
        out.put(f"error: {e!r}")


def test_processes_starting_together_share_one_whole_key(tmp_path: Path) -> None:
    """Each of 12 processes creates the key at the same moment: none reads a half-written
    file, and all end with the one key that was published."""
    ctx = mp.get_context("fork")
    for attempt in range(5):
        path = tmp_path / f"try{attempt}" / "signing.pem"
        barrier, out = ctx.Barrier(12), ctx.Queue()
        procs = [ctx.Process(target=_start, args=(str(path), barrier, out)) for _ in range(12)]
        for p in procs:
            p.start()
        keys = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(30)
        errors = [k for k in keys if k.startswith("error")]
        assert not errors, errors
        assert len(set(keys)) == 1
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert (path.stat().st_mode & 0o777) == 0o600
        assert key is not None
        assert sorted(p.name for p in path.parent.iterdir()) == ["signing.pem"]
