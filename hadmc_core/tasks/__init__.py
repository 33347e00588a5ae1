"""Tasks: what a model does (loss, metric, output check, head, alignment points, data).

    from hadmc_core import tasks
    task = tasks.get("classification")

A new task is one module defining a class that satisfies ``tasks.base.Task`` (usually a
``GraphTask`` subclass) and calling ``register(MyTask())`` at import, plus its import in
``_builtins`` below. The built-in tasks (and torch) are imported on the first ``get`` or
``names``, so the torch-free helpers here (``detection_io``, which the agent imports) stay
importable without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hadmc_core.errors import UnknownNameError

if TYPE_CHECKING:
    from hadmc_core.tasks.base import GraphTask, Task

_TASKS: dict[str, Task] = {}
_BUILTINS_LOADED = False


def _builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from hadmc_core.tasks import classification, detection  # noqa: F401  (register)


def register(task: Task) -> Task:
    """Add (or replace) a task under ``task.name``; returns it."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} needs a non-empty name")
    _TASKS[task.name] = task
    return task


def get(name: str) -> Task:
    _builtins()
    try:
        return _TASKS[name]
    except KeyError:
        raise UnknownNameError("task", name, list(_TASKS)) from None


def names() -> list[str]:
    _builtins()
    return sorted(_TASKS)


def __getattr__(name: str) -> Any:
    if name in ("GraphTask", "Task"):
        from hadmc_core.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GraphTask", "Task", "get", "names", "register"]
