"""Shared CLI helpers: one-line errors, rich progress."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from hadmc_core.errors import HadmcError
from hadmc_core.progress import ProgressFn

console = Console(stderr=True)
out = Console()
HANDLED = (HadmcError,)
P = ParamSpec("P")
R = TypeVar("R")


def fail(e: BaseException | str) -> NoReturn:
    console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn HadmcError (and file errors) into one red line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except HadmcError as e:
            fail(e)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
            fail(f"{e.strerror}: {e.filename}")
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[ProgressFn]:
    """Yield a ProgressFn drawing one bar per stage."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    with Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as prog:
        tasks: dict[str, TaskID] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = prog.add_task(stage, total=total or None)
            prog.update(tasks[stage], completed=done, total=total or None)

        yield update
