"""Content-addressed artifact store on a local directory.

Objects are named by their BLAKE3 hash (``objects/ab/abcdef...``). Uploads stream into a
temporary file in the same file system, are fsynced and renamed into place atomically; the
same content uploaded twice (even concurrently) is stored once.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

import blake3

from cloud_service.errors import PayloadTooLargeError
from hadmc_core.fsutil import replace_atomic

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        # Absolute once, so every path handed out (a symlink's target included) works
        # wherever it is used, whatever the working directory was or becomes.
        self.root = Path(root).expanduser().resolve()
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the object is on local disk (a subclass may fetch it there first)."""
        return self.local_path(digest)

    def local_path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a BLAKE3 hex digest: {digest!r}")
        return self.root / "objects" / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.local_path(digest).is_file()

    def temp_file(self) -> Path:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="up-")
        os.close(fd)
        return Path(name)

    def commit(self, tmp: Path, digest: str) -> Path:
        """Move a fully written temp file to its content address (fsynced, atomic,
        deduplicating)."""
        final = self.local_path(digest)
        if final.is_file():
            tmp.unlink(missing_ok=True)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        # Same bytes under the same name: a concurrent rename of an identical file is harmless.
        replace_atomic(tmp, final)
        return final

    async def ingest_stream(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[str, int]:
        """Store a streamed upload; PayloadTooLargeError past ``max_bytes``."""
        tmp = self.temp_file()
        hasher, size = blake3.blake3(), 0
        try:
            with open(tmp, "wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLargeError(
                            f"upload larger than the limit of {max_bytes / 2**20:.0f} MiB "
                            "(HADMC_MAX_UPLOAD_MB)")
                    hasher.update(chunk)
                    f.write(chunk)
            digest = hasher.hexdigest()
            self.commit(tmp, digest)
            return digest, size
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()

    def ingest_file(self, src: Path) -> tuple[str, int]:
        """Copy a local file into the store."""
        hasher = blake3.blake3()
        tmp = self.temp_file()
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                while block := fin.read(CHUNK):
                    hasher.update(block)
                    fout.write(block)
            digest = hasher.hexdigest()
            self.commit(tmp, digest)
            return digest, self.local_path(digest).stat().st_size
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store a small in-memory artifact (manifest, probe, delta)."""
        digest = blake3.blake3(data).hexdigest()
        if self.exists(digest):
            return digest, len(data)
        tmp = self.temp_file()
        try:
            tmp.write_bytes(data)
            self.commit(tmp, digest)
            return digest, len(data)
        finally:
            with suppress(FileNotFoundError):
                tmp.unlink()

    def link_as(self, digest: str, directory: Path, name: str) -> Path:
        """Expose an object under a file name (e.g. ``x.npz``) in ``directory``."""
        dst = Path(directory) / name
        try:
            os.symlink(self.path(digest), dst)
        except OSError:
            shutil.copyfile(self.path(digest), dst)
        return dst
