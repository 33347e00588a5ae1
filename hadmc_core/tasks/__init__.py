"""Tasks: what a model does (loss, metric, output check, head, alignment points, data).

    from hadmc_core import tasks
    task = tasks.get("classification")

A new task is one module defining a class that satisfies ``tasks.base.Task`` (usually a
``GraphTask`` subclass) and calling ``register(MyTask())`` at import, plus its import below.
"""

from __future__ import annotations

from hadmc_core.errors import UnknownNameError
from hadmc_core.tasks.base import GraphTask, Task

_TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add (or replace) a task under ``task.name``; returns it."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} needs a non-empty name")
    _TASKS[task.name] = task
    return task


def get(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise UnknownNameError("task", name, list(_TASKS)) from None


def names() -> list[str]:
    return sorted(_TASKS)


from hadmc_core.tasks import classification as _classification  # noqa: E402  (registers)
from hadmc_core.tasks import detection as _detection  # noqa: E402  (registers)

del _classification, _detection
__all__ = ["GraphTask", "Task", "get", "names", "register"]
