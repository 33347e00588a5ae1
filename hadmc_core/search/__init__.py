"""Hardware-aware search of per-group channel counts (and, where chosen, per-layer
precisions) under a latency target.

Strategies are plug-ins (``registry``): ``greedy`` (marginal allocation, the default),
``evolution`` (Optuna's NSGA-II sampler) and ``rl`` (a PPO agent from Stable-Baselines3
choosing width and precision layer by layer, as AMC/HAQ). All search the same ``Problem``:
the latency model's estimate and one accuracy proxy (``space``), and return a ``Plan``.
Adding one is a module with a function decorated by ``register("name")``, imported here.
"""

from hadmc_core.search import evolution, rl  # noqa: F401  (registrations)
from hadmc_core.search.greedy import allocate, floor_fraction, greedy
from hadmc_core.search.registry import get, names, register, run
from hadmc_core.search.space import (
    PRECISIONS,
    Allocation,
    Budget,
    Plan,
    Problem,
    Shapes,
    channel_choices,
    estimate_ms,
    params_of,
    round_channels,
)

__all__ = ["PRECISIONS", "Allocation", "Budget", "Plan", "Problem", "Shapes", "allocate",
           "channel_choices", "estimate_ms", "floor_fraction", "get", "greedy", "names",
           "params_of", "register", "round_channels", "run"]
