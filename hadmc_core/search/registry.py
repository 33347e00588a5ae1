"""Registry of search strategies: a strategy is a function
``(problem, target_ms, budget) -> Plan`` registered under a name; ``prune.search`` (config),
``hadmc compress --search`` and a job's ``{"prune": {"search": ...}}`` select it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hadmc_core.errors import UnknownNameError
from hadmc_core.search.space import Budget, Plan, Problem

StrategyFn = Callable[[Problem, float, Budget], Plan]
F = TypeVar("F", bound=StrategyFn)
_STRATEGIES: dict[str, StrategyFn] = {}


def register(name: str) -> Callable[[F], F]:
    """Decorator: make ``fn`` the strategy ``name`` (a later registration replaces it)."""
    def deco(fn: F) -> F:
        _STRATEGIES[name] = fn
        return fn
    return deco


def names() -> list[str]:
    return sorted(_STRATEGIES)


def get(name: str) -> StrategyFn:
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise UnknownNameError("search strategy", name, names()) from None


def run(name: str, problem: Problem, target_ms: float, budget: Budget | None = None) -> Plan:
    """Search with strategy ``name`` for the plan of least proxy whose estimate is at most
    ``target_ms``; the plan carries the candidates evaluated and the seconds taken."""
    fn = get(name)
    start, t = problem.evaluated, time.perf_counter()
    plan = fn(problem, target_ms, budget or Budget())
    plan.strategy, plan.evaluated = name, problem.evaluated - start
    plan.seconds = time.perf_counter() - t
    return plan
