"""Random access to an artifact's files as one concatenated byte range (read-only mmap)."""

from __future__ import annotations

import bisect
import mmap
from contextlib import ExitStack, suppress
from pathlib import Path

import numpy as np

from hadmc_core.delta.errors import FormatError
from hadmc_core.delta.manifest import Manifest


def artifact_paths(main: Path, names: list[str]) -> list[Path]:
    """The model file is ``main``; the others (external data) sit next to it."""
    return [main, *(main.parent / n for n in names[1:])]


class Files:
    """The files of a manifest, addressed by global offset (file i starts where i-1 ends)."""

    def __init__(self, main: Path, m: Manifest, release: bool = False) -> None:
        """``release``: drop pages from this process's memory once read (apply reads the
        base once, front to back; its resident size then stays flat)."""
        self.release = release and hasattr(mmap, "MADV_DONTNEED")
        self.paths = artifact_paths(Path(main), [f.path for f in m.files])
        self.sizes = [f.size for f in m.files]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self._stack = ExitStack()
        self._maps: list[mmap.mmap | bytes] = []

    @classmethod
    def maybe(cls, main: Path | None, m: Manifest) -> Files | _Nothing:
        return _Nothing() if main is None else cls(main, m)

    def __enter__(self) -> Files:
        try:
            for p, size in zip(self.paths, self.sizes, strict=True):
                fh = self._stack.enter_context(p.open("rb"))
                if p.stat().st_size != size:
                    raise FormatError(f"{p} has {p.stat().st_size} bytes, expected {size}")
                self._maps.append(self._stack.enter_context(
                    mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)) if size else b"")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._maps = []
        with suppress(BufferError):  # an array view is still alive; the GC unmaps it later
            self._stack.close()

    def start(self, fi: int) -> int:
        return self.starts[fi]

    def _locate(self, off: int, n: int) -> tuple[int, int]:
        fi = bisect.bisect_right(self.starts, off) - 1
        if off < 0 or fi < 0 or off + n > self.starts[fi] + self.sizes[fi]:
            raise FormatError(f"range {off}+{n} does not lie inside one base file")
        return fi, off - self.starts[fi]

    def read(self, off: int, n: int) -> bytes:
        if n == 0:
            return b""
        fi, rel = self._locate(off, n)
        data = bytes(self._maps[fi][rel:rel + n])
        self.release_range(off, n)
        return data

    def release_range(self, off: int, n: int) -> None:
        """Drop the pages of a range from this process's memory (when ``release``)."""
        fi, rel = self._locate(off, n)
        mm = self._maps[fi]
        if self.release and isinstance(mm, mmap.mmap) and n:
            lo = rel - rel % mmap.PAGESIZE
            mm.madvise(mmap.MADV_DONTNEED, lo, rel + n - lo)

    def array(self, off: int, count: int, dtype: np.dtype) -> np.ndarray:
        """A read-only array view of ``count`` items at global offset ``off``."""
        fi, rel = self._locate(off, count * dtype.itemsize)
        return np.frombuffer(self._maps[fi], dtype, count=count, offset=rel)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
