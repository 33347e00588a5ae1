"""Built-in architectures (``hadmc_core.models``), optionally with safetensors weights whose
metadata names the architecture and its options."""

from __future__ import annotations

from pathlib import Path

from hadmc_core.errors import ModelSourceError, WeightsMismatchError
from hadmc_core.sources.base import LoadedModel, LoadOptions, register


def matches(ref: str) -> bool:
    from hadmc_core.models import ARCHITECTURES

    return ref in ARCHITECTURES or ref.lower().endswith(".safetensors")


def default_input_shape(in_channels: int, stem: str) -> tuple[int, int, int]:
    """28x28 for the small stem (the digits and Fashion-MNIST scale), 224x224 otherwise."""
    side = 28 if stem == "small" else 224
    return (in_channels, side, side)


def load_zoo(ref: str, opts: LoadOptions) -> LoadedModel:
    from hadmc_core.models import ArchSpec, build_model, load_weights, read_weights
    from hadmc_core.models import spec_from_metadata as from_meta

    weights = opts.weights
    arch: str | None = ref  # None: read it from the weights' metadata
    if ref.lower().endswith(".safetensors"):
        if weights is not None and Path(weights) != Path(ref):
            raise ModelSourceError(f"{ref} is a weights file; do not pass other weights")
        weights, arch = Path(ref), None
    if opts.model_args:
        raise ModelSourceError("model arguments are for factories; a built-in architecture "
                               "takes num_classes, in_channels, stem and width")
    state, meta = read_weights(weights) if weights is not None else ({}, {})
    stored = from_meta(meta)
    if arch is None:
        if stored is None:
            raise WeightsMismatchError(
                f"{weights} carries no architecture metadata; name the architecture")
        arch = stored.arch
    if stored is not None and stored.arch != arch:
        raise WeightsMismatchError(f"{weights} holds weights for {stored.arch}, not {arch}")
    base = stored or ArchSpec(arch)
    spec = ArchSpec(
        arch,
        base.in_channels if opts.in_channels is None else int(opts.in_channels),
        base.num_classes if opts.num_classes is None else int(opts.num_classes),
        base.stem if opts.stem is None else opts.stem,
        base.width if opts.width is None else float(opts.width))
    model = build_model(spec)
    if weights is not None:
        load_weights(model, state)
    shape = opts.input_shape or default_input_shape(spec.in_channels, spec.stem)
    if shape[0] != spec.in_channels:
        raise ModelSourceError(f"{arch} takes {spec.in_channels} input channels, but the "
                               f"input shape is {shape}")
    return LoadedModel(
        name=arch, kind="zoo", module=model.eval(), input_shape=tuple(shape),
        num_outputs=spec.num_classes, spec=spec,
        origin={"kind": "zoo", "arch": arch, "spec": spec.to_dict(),
                "weights": None if weights is None else str(weights)})


register("zoo", matches, load_zoo)
