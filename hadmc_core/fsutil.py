"""Atomic file writes: a temp file in the same directory, fsync, ``os.replace``, fsync the
directory. A crash at any point leaves either the old file or the new one, never a part.

Torch-free (the standard library only): the edge agent and the service use it too.
Temp files are named ``.<name>.tmp-<random>`` beside the target, so a directory's leftovers
from a crash are found with ``glob(".*.tmp-*")``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path, *, strict: bool = True) -> None:
    """Make a rename in directory ``path`` durable. With ``strict=False`` a directory that
    cannot be opened or synced (some platforms and file systems) is skipped silently."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def temp_path(path: Path) -> Path:
    """A fresh temp file name beside ``path`` (same directory, so same file system)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def replace_atomic(tmp: Path, path: Path) -> None:
    """Move a completely written ``tmp`` over ``path``: fsync it, ``os.replace``, fsync the
    directory. ``tmp`` must be on the same file system as ``path``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically; a new file gets ``mode`` (less the umask; 0o666
    gives what a plain ``open`` would)."""
    path = Path(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """For writers that take a file name (safetensors, ONNX): yields a temp path beside
    ``path`` to write; on a clean exit it replaces ``path`` atomically, on an error it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        replace_atomic(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
