"""Progress reporting shared by every long stage.

A ``ProgressFn`` is called as ``fn(stage, done, total)``; ``total`` may be 0 when
unknown. The CLI renders it with rich; the service stores it on the job row.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    return None
