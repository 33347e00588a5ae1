"""Techniques: each a config dataclass (``hadmc_core.config``) and a handler registered for
its type, as torchao's config-to-handler registry.

    from hadmc_core.techniques import Technique, register

    @register(MyConfig)            # MyConfig(TechniqueConfig) with key = "mine"
    class Mine(Technique):
        order = 25                 # between distill (20) and fuse (30)
        def apply(self, ctx, cfg, work):
            ...                    # change work.module

A plain function ``fn(ctx, cfg, work)`` registers as a module-phase handler. ``register``
also makes the config readable from pipeline JSON under ``MyConfig.key``; the controller
picks the technique up from ``PipelineConfig.extra`` without a change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hadmc_core.config import TechniqueConfig, register_config
from hadmc_core.errors import ConfigError
from hadmc_core.techniques.base import FunctionTechnique, Technique

H = TypeVar("H")
_HANDLERS: dict[type[TechniqueConfig], Technique] = {}


def register(config_type: type[TechniqueConfig]) -> Callable[[H], H]:
    """Decorator: ``handler`` (a ``Technique`` subclass or ``fn(ctx, cfg, work)``) serves
    ``config_type``."""

    def deco(handler: H) -> H:
        if isinstance(handler, type) and issubclass(handler, Technique):
            obj: Technique = handler()
        elif callable(handler):
            obj = FunctionTechnique(handler)
        else:
            raise TypeError(f"{handler!r} is neither a Technique subclass nor a function")
        register_config(config_type)
        _HANDLERS[config_type] = obj
        return handler

    return deco


def handler_for(cfg: TechniqueConfig) -> Technique:
    for cls in type(cfg).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    raise ConfigError(f"no handler is registered for {type(cfg).__name__}; register one with "
                      "hadmc_core.techniques.register")


def registered() -> dict[type[TechniqueConfig], Technique]:
    return dict(_HANDLERS)


def ordered(configs: list[TechniqueConfig]) -> list[tuple[Technique, Any]]:
    """(handler, config) pairs in run order: module phase, then graph phase, by ``order``."""
    pairs = [(handler_for(c), c) for c in configs]
    phase = {"module": 0, "graph": 1}
    return sorted(pairs, key=lambda p: (phase.get(p[0].phase, 2), p[0].order))


from hadmc_core.techniques import distill as _distill  # noqa: E402  (built-ins register)
from hadmc_core.techniques import fuse as _fuse  # noqa: E402
from hadmc_core.techniques import int4 as _int4  # noqa: E402
from hadmc_core.techniques import prune as _prune  # noqa: E402
from hadmc_core.techniques import quantize as _quantize  # noqa: E402

del _distill, _fuse, _int4, _prune, _quantize
__all__ = ["FunctionTechnique", "Technique", "handler_for", "ordered", "register", "registered"]
