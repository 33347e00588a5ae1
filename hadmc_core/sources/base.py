"""What a model source returns, and the registry that picks a source for a reference."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hadmc_core.errors import ModelSourceError

if TYPE_CHECKING:
    from torch import nn

    from hadmc_core.models import ArchSpec


@dataclass
class LoadedModel:
    """A model ready for the pipeline, whatever it came from.

    ``module`` is None when an ONNX graph could not be converted to PyTorch; the pipeline
    then runs the stages that work on the graph alone and ``skipped`` says what it left out.
    """

    name: str
    kind: str
    module: nn.Module | None
    input_shape: tuple[int, ...]
    num_outputs: int | None = None
    onnx_path: Path | None = None
    spec: ArchSpec | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadOptions:
    """Everything ``load()`` passes to a source's loader."""

    weights: Path | None = None
    model_args: dict[str, Any] | None = None
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    stem: str | None = None
    width: float | None = None


Matcher = Callable[[str], bool]
Loader = Callable[[str, LoadOptions], LoadedModel]
_SOURCES: dict[str, tuple[Matcher, Loader]] = {}


def register(kind: str, matcher: Matcher, loader: Loader) -> None:
    """Add (or replace) a model source. The latest registration is tried first, so a new
    source can claim references a built-in would also take (``catalog:x`` has the form of
    a factory)."""
    _SOURCES.pop(kind, None)
    _SOURCES[kind] = (matcher, loader)


def kinds() -> list[str]:
    return list(_SOURCES)


def kind_of(ref: str) -> str | None:
    """The kind of source that ``load(ref)`` would use (None: no source takes it)."""
    ref = str(ref)
    return next((kind for kind, (matcher, _) in reversed(_SOURCES.items()) if matcher(ref)),
                None)


def load(ref: str, *, weights: Path | None = None, model_args: dict[str, Any] | None = None,
         input_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
         in_channels: int | None = None, stem: str | None = None, width: float | None = None,
         allow: Iterable[str] | None = None) -> LoadedModel:
    """Load the model ``ref`` names: a built-in architecture (``resnet18``), a Python
    factory (``package.module:function``) or an ONNX file (``model.onnx``).

    ``allow`` limits the kinds of source tried (a service that must never import user code
    passes ``("zoo", "onnx")``).
    """
    ref = str(ref)
    if model_args is not None and not isinstance(model_args, dict):
        raise ModelSourceError("model arguments must be a JSON object (name → value)")
    if input_shape is not None:
        input_shape = tuple(int(d) for d in input_shape)
        if not input_shape or any(d <= 0 for d in input_shape):
            raise ModelSourceError(f"input shape {input_shape} must be positive sizes, "
                                   "e.g. (3, 224, 224)")
    opts = LoadOptions(None if weights is None else Path(weights), model_args, input_shape,
                       num_classes, in_channels, stem, width)
    allowed = None if allow is None else set(allow)
    kind = kind_of(ref)
    if kind is not None:
        if allowed is not None and kind not in allowed:
            raise ModelSourceError(f"{ref!r} is a {kind} model, which is not accepted "
                                   f"here (accepted: {', '.join(sorted(allowed))})")
        return _SOURCES[kind][1](ref, opts)
    raise ModelSourceError(
        f"{ref!r} is not a model: give a built-in architecture name, "
        "'package.module:factory' or a path to an .onnx file")
