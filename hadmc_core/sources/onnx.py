"""An ONNX file: checked, read as data, converted to PyTorch when every operator maps.

A graph that does not convert still loads (``module=None``): the pipeline then runs the
stages that work on the graph alone, and ``skipped`` names the operator and node that
kept pruning and distillation out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hadmc_core.errors import ModelSourceError, UnsupportedOperatorError
from hadmc_core.sources.base import LoadedModel, LoadOptions, register

log = logging.getLogger(__name__)

#: Stages that need a PyTorch module; skipped when the graph does not convert.
TORCH_STAGES = ("prune", "distill")


def matches(ref: str) -> bool:
    return ref.lower().endswith(".onnx")


def input_shape(model: Any, given: tuple[int, ...] | None, path: Path) -> tuple[int, ...]:
    """(C, H, W) of the single input: from the graph, dynamic dims from ``given``."""
    from hadmc_core.sources.onnx_torch import example_shape, graph_inputs

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(repr(i.name) for i in inputs)
        raise ModelSourceError(f"{path} has {len(inputs)} inputs ({names}); HAD-MC compresses "
                               "models with one input")
    vi = inputs[0]
    dims = vi.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise ModelSourceError(f"{path}: input {vi.name!r} has rank {len(dims)}; expected a "
                               "batch dimension followed by (channels, height, width)")
    batch = dims[0]
    if batch.HasField("dim_value") and batch.dim_value > 1:
        raise ModelSourceError(f"{path}: the batch dimension of {vi.name!r} is fixed at "
                               f"{batch.dim_value}; export with a dynamic batch (or batch 1)")
    return example_shape(vi, given)[1:]


def output_classes(model: Any) -> int | None:
    """Classes of the first output when it is (batch, classes) with a fixed class count."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
        return int(dims[1].dim_value)
    return None


def compare_with_runtime(module: Any, path: Path, shape: tuple[int, ...],
                         batch: int) -> float | None:
    """Largest relative difference of the converted module from ONNX Runtime on one random
    batch; None when ONNX Runtime cannot run the file here."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})
    except Exception as e:  # a runtime limitation is not the converter's to judge
        log.warning("ONNX Runtime could not run %s to check the conversion: %s", path, e)
        return None
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    outs = out if isinstance(out, tuple | list) else (out,)
    worst = 0.0
    for got, want in zip(outs, ref, strict=False):
        got = got.numpy()
        if got.shape != want.shape:
            return float("inf")
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        worst = max(worst, float(np.abs(got - want).max(initial=0.0)) / scale)
    return worst


def skipped_for(reason: str, op: str | None, node: str | None) -> list[dict[str, Any]]:
    return [{"stage": s, "reason": reason, "op": op, "node": node} for s in TORCH_STAGES]


def load_onnx(ref: str, opts: LoadOptions) -> LoadedModel:
    from hadmc_core.sources.onnx_file import read_onnx
    from hadmc_core.sources.onnx_torch import convert, graph_inputs

    if opts.weights is not None or opts.model_args:
        raise ModelSourceError(f"{ref}: an ONNX file carries its own weights and takes no "
                               "model arguments")
    path = Path(ref)
    model = read_onnx(path)
    shape = input_shape(model, opts.input_shape, path)
    batch = 1 if graph_inputs(model)[0].type.tensor_type.shape.dim[0].dim_value == 1 else 2
    module, skipped = None, []
    try:
        module = convert(model, shape)
    except UnsupportedOperatorError as e:
        reason = f"operator {e.op} is not convertible to PyTorch"
        skipped = skipped_for(reason + (f" ({e.detail})" if e.detail else ""), e.op, e.node)
        log.info("%s: %s; compressing the graph alone", path, e)
    if module is not None:
        diff = compare_with_runtime(module, path, shape, batch)
        if diff is not None and diff > 1e-3:
            module = None
            skipped = skipped_for(
                f"the converted PyTorch model differs from ONNX Runtime (relative difference "
                f"{diff:.2g})", None, None)
            log.warning("%s: %s", path, skipped[0]["reason"])
    classes = output_classes(model)
    if classes is None and module is not None:
        from hadmc_core.sources.factory import output_classes as run_classes

        classes = run_classes(module, shape, ref)
    return LoadedModel(
        name=path.stem, kind="onnx", module=module, input_shape=shape, num_outputs=classes,
        onnx_path=path, skipped=skipped,
        origin={"kind": "onnx", "file": str(path), "converted": module is not None})


register("onnx", matches, load_onnx)
