"""A model built by the user's own Python code: ``package.module:factory``.

The module is imported (the current directory is searched after the installed packages),
the factory is called with the model arguments as keyword arguments, and the returned
``nn.Module`` gets the safetensors weights, loaded strictly. This runs the user's code, so
it is for the CLI on the user's machine; a service accepting uploads passes
``allow=("zoo", "onnx")`` to ``load()``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hadmc_core.errors import ModelSourceError
from hadmc_core.sources.base import LoadedModel, LoadOptions, register

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY = re.compile(rf"^({_NAME}(?:\.{_NAME})*):({_NAME}(?:\.{_NAME})*)$")
HINT = "check the factory, its model arguments and the weights file"


def matches(ref: str) -> bool:
    return bool(_FACTORY.match(ref)) and not ref.lower().endswith((".onnx", ".safetensors"))


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import(module_name: str, ref: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ModelSourceError(
                f"{ref}: no module named {module_name!r} (install it, or run from the "
                "directory that holds it)") from None
        raise ModelSourceError(f"{ref}: importing {module_name} failed: {e}") from None
    except (Exception, SystemExit) as e:
        raise ModelSourceError(
            f"{ref}: importing {module_name} failed: {type(e).__name__}: {e}") from None


def build(ref: str, model_args: dict[str, Any] | None):
    """Import the module, find the factory, call it; the returned nn.Module."""
    found = _FACTORY.match(ref)
    if not found:
        raise ModelSourceError(f"{ref!r} is not of the form 'package.module:factory'")
    module_name, attr_path = found.groups()
    with _cwd_on_path():
        return _build(ref, module_name, attr_path, model_args)


def _build(ref: str, module_name: str, attr_path: str, model_args: dict[str, Any] | None):
    from torch import nn

    obj = _import(module_name, ref)
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ModelSourceError(f"{ref}: module {module_name} has no attribute "
                                   f"{attr_path!r}")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ModelSourceError(f"{ref}: {attr_path} is a {type(obj).__name__}, not callable")
    try:
        model = obj(**(model_args or {}))
    except Exception as e:
        raise ModelSourceError(f"{ref} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ModelSourceError(
            f"{ref} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def output_classes(model: Any, input_shape: tuple[int, ...], ref: str) -> int | None:
    """Run the model once on zeros; the class count when the output is (batch, classes)."""
    import torch

    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *input_shape)))
    except Exception as e:
        raise ModelSourceError(f"{ref} does not run on an input of shape "
                               f"{(1, *input_shape)}: {type(e).__name__}: {e}") from None
    if isinstance(out, tuple | list) and out:
        out = out[0]
    if isinstance(out, torch.Tensor) and out.dim() == 2:
        return int(out.shape[1])
    return None


def load_factory(ref: str, opts: LoadOptions) -> LoadedModel:
    from hadmc_core.models import load_weights, read_weights

    if opts.input_shape is None:
        raise ModelSourceError(f"{ref}: a model from a factory needs its input shape "
                               "(channels, height, width)")
    model = build(ref, opts.model_args)
    if opts.weights is not None:
        state, _meta = read_weights(opts.weights)
        load_weights(model, state, hint=HINT)
    model.eval()
    return LoadedModel(
        name=ref.rsplit(":", 1)[1], kind="factory", module=model,
        input_shape=tuple(opts.input_shape),
        num_outputs=output_classes(model, opts.input_shape, ref),
        origin={"kind": "factory", "factory": ref, "args": dict(opts.model_args or {}),
                "weights": None if opts.weights is None else str(opts.weights)})


register("factory", matches, load_factory)
