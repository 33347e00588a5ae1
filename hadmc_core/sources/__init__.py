"""Where a model comes from: a built-in architecture, a Python factory, an ONNX file.

    from hadmc_core.sources import load
    m = load("resnet18", weights=Path("model.safetensors"))
    m = load("mypkg.models:build", model_args={"width": 2}, input_shape=(3, 64, 64))
    m = load("model.onnx")   # m.module is None when an operator does not convert

A new source is one module that calls ``register(kind, matcher, loader)`` at import, plus
its import below.
"""

from __future__ import annotations

from typing import Any

from hadmc_core.sources import factory as _factory  # built-in sources register at import
from hadmc_core.sources import onnx as _onnx
from hadmc_core.sources import zoo as _zoo
from hadmc_core.sources.base import (
    LoadedModel,
    LoadOptions,
    kind_of,
    kinds,
    load,
    register,
)


def onnx_to_torch(path: Any, input_shape: tuple[int, ...] | None = None) -> Any:
    """Convert an ONNX file to a PyTorch module (see ``hadmc_core.sources.onnx_torch``)."""
    from hadmc_core.sources.onnx_torch import onnx_to_torch as convert

    return convert(path, input_shape)


__all__ = ["LoadOptions", "LoadedModel", "kind_of", "kinds", "load", "onnx_to_torch", "register"]
del _onnx, _zoo, _factory
