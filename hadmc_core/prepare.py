"""A model and a dataset made to fit each other before ``compress()``.

    loaded, data, note = prepare("model.onnx", load_dataset("digits"))
    compress(loaded, data, profile, out_dir, cfg)

The model is loaded by ``hadmc_core.sources``; what the reference leaves open comes from the
dataset or the weights file:

- a built-in architecture runs at the dataset's image size (its layers do not fix one);
  without weights, or with weights that do not name it in their metadata, it is built for
  the dataset's channels and classes;
- an ONNX graph's dynamic channel, height or width is taken from the dataset's images;
- a factory's input shape, when not given, comes from the weights' metadata
  (``input_shape``: ``"3,32,32"``).

A model whose output does not fit the dataset is refused; then the dataset's images are
fitted to the model's input (``hadmc_core.data.adapt``) and ``note`` is the line that says
how, or None.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hadmc_core.data import DataSplits
from hadmc_core.data.adapt import adapt
from hadmc_core.errors import ConfigError, HadmcError
from hadmc_core.sources import LoadedModel, load

#: The safetensors metadata key that holds a factory model's input shape.
INPUT_SHAPE_KEY = "input_shape"


def parse_shape(text: str, what: str = "input shape") -> tuple[int, ...]:
    """``"3,32,32"``, ``"3x32x32"`` or ``"[3, 32, 32]"`` as a tuple of positive ints."""
    raw = text.strip().strip("[]()")
    try:
        shape = tuple(int(p) for p in raw.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"{what} {text!r} is not C,H,W (three positive integers, e.g. "
                          "3,32,32)")
    return shape


def parse_model_args(text: str | None) -> dict[str, Any] | None:
    """The factory's keyword arguments from a JSON object."""
    if text is None:
        return None
    try:
        args = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"model arguments are not valid JSON ({e}); give an object such "
                          'as \'{"width": 2}\'') from None
    if not isinstance(args, dict):
        raise ConfigError(f"model arguments must be a JSON object (name: value), not "
                          f"{type(args).__name__}")
    return args


def _metadata(weights: Path | None) -> dict[str, str]:
    """The weights' safetensors metadata; empty when unreadable (the loader says why)."""
    from hadmc_core.safetensors_header import read_header

    if weights is None:
        return {}
    try:
        return dict(read_header(Path(weights)).metadata)
    except (HadmcError, OSError):
        return {}


def _onnx_shape(path: str, data_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The graph input's (C, H, W) with dynamic sizes taken from the data; None when the
    graph fixes them all (or the loader will explain what is wrong with the file)."""
    import onnx

    from hadmc_core.sources.onnx_torch import graph_inputs

    try:
        inputs = graph_inputs(onnx.load(path, load_external_data=False))
    except Exception:  # noqa: BLE001 - the loader reports a broken file with its reason
        return None
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    if len(dims) != len(data_shape) + 1:
        return None
    static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
              for d in dims[1:]]
    if all(static):
        return None
    return tuple(s or d for s, d in zip(static, data_shape, strict=True))


def _kind(ref: str) -> str:
    from hadmc_core.sources import kind_of

    return kind_of(ref) or "other"


def _zoo_options(ref: str, weights: Path | None, data: DataSplits, stem: str | None,
                 width: float | None) -> dict[str, Any]:
    """The dataset's channels and classes unless the weights name the architecture."""
    stored = _metadata(Path(ref) if ref.lower().endswith(".safetensors") else weights)
    options: dict[str, Any] = {"stem": stem, "width": width}
    if "arch" not in stored:
        options.update(in_channels=data.in_channels, num_classes=data.num_classes)
    return options


def _factory_shape(ref: str, weights: Path | None, data: DataSplits) -> tuple[int, ...]:
    stored = _metadata(weights).get(INPUT_SHAPE_KEY)
    if stored is None:
        example = ",".join(str(d) for d in (data.in_channels, *data.image_size))
        raise ConfigError(
            f"{ref}: a factory's model needs its input shape (channels, height, width), "
            f"e.g. {example}: give it (--input-shape), or store it in the weights' metadata "
            f"as {INPUT_SHAPE_KEY!r}")
    return parse_shape(stored, f"input shape in the metadata of {weights}")


def load_for(ref: str, data: DataSplits, *, weights: Path | None = None,
             model_args: dict[str, Any] | None = None,
             input_shape: tuple[int, ...] | None = None, stem: str | None = None,
             width: float | None = None, allow: Iterable[str] | None = None) -> LoadedModel:
    """``sources.load(ref, ...)`` with what the reference leaves open taken from ``data``
    and the weights (see module doc)."""
    kind = _kind(ref)
    extra: dict[str, Any] = {}
    if kind in ("onnx", "factory") and (stem is not None or width is not None):
        raise ConfigError(f"stem and width are options of a built-in architecture; {ref} is "
                          f"an {kind} model" if kind == "onnx" else
                          f"stem and width are options of a built-in architecture; {ref} is "
                          "a factory (give its options in the model arguments)")
    if kind == "zoo":
        extra = _zoo_options(ref, weights, data, stem, width)
    elif kind == "onnx" and input_shape is None:
        input_shape = _onnx_shape(ref, (data.in_channels, *data.image_size))
    elif kind == "factory" and input_shape is None:
        input_shape = _factory_shape(ref, weights, data)
    loaded = load(ref, weights=weights, model_args=model_args, input_shape=input_shape,
                  allow=allow, **extra)
    if loaded.kind == "zoo" and input_shape is None:
        loaded = dataclasses.replace(loaded, input_shape=(loaded.input_shape[0],
                                                          *data.image_size))
    return loaded


def fit(loaded: LoadedModel, data: DataSplits, task: str = "classification"
        ) -> tuple[DataSplits, str | None]:
    """``data`` fitted to ``loaded``'s input and the line that says how (None when nothing
    changed); a model whose output does not fit the data (``task.check_model``) is refused
    before the images are touched."""
    from hadmc_core import tasks

    if loaded.num_outputs is not None:
        tasks.get(task).check_model((1, loaded.num_outputs), data)
    return adapt(data, loaded.input_shape)


def prepare(ref: str, data: DataSplits, *, task: str = "classification", **options: Any
            ) -> tuple[LoadedModel, DataSplits, str | None]:
    """The model ``ref`` names, ``data`` fitted to its input, and the line that says how
    (None when nothing changed). ``options`` are ``load_for``'s."""
    loaded = load_for(ref, data, **options)
    data, note = fit(loaded, data, task)
    return loaded, data, note
