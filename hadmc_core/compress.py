"""``compress()``: run the whole pipeline and write model.onnx, report.json, report.png.

    compress(model, data, profile, out_dir, cfg)           # an nn.Module or a LoadedModel
    compress(model, spec, data, profile, out_dir, cfg)     # older form, an ArchSpec second

The output directory appears only when complete: everything is written to a hidden
temporary sibling that is renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from hadmc_core import decision, pipeline, references, report, tasks, update
from hadmc_core.config import PipelineConfig
from hadmc_core.context import Context
from hadmc_core.data import DataSplits, with_validation
from hadmc_core.errors import HadmcError
from hadmc_core.hal.feedback import Correction
from hadmc_core.hal.profile import HardwareProfile
from hadmc_core.measure import backend_for
from hadmc_core.models import ArchSpec
from hadmc_core.plan import Plan, PlanError, load_plan, record_kept
from hadmc_core.progress import ProgressFn, no_progress
from hadmc_core.report import ModelStats, Report
from hadmc_core.sources import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class CompressionResult:
    out_dir: Path
    report: dict[str, Any]
    met: bool
    message: str


def _prepare_out(out_dir: Path, overwrite: bool) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise HadmcError(f"output directory {out_dir} exists and is not empty; "
                         "choose another --out or pass --overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))


def _finish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


@overload
def compress(model: nn.Module | LoadedModel, data: DataSplits, profile: HardwareProfile,
             out_dir: Path, cfg: PipelineConfig | None = None,
             progress: ProgressFn = no_progress, *, example_input: torch.Tensor | None = None,
             task: str = "classification", spec: ArchSpec | None = None,
             overwrite: bool = False, measure_layers: bool | None = None,
             device_table: dict[str, list[float]] | None = None,
             update_of: Plan | Path | str | None = None,
             allow_restructure: bool = False,
             latency_correction: Correction | None = None,
             device_tables: dict[str, dict[str, list[float]]] | None = None
             ) -> CompressionResult: ...


@overload
def compress(model: nn.Module, spec: ArchSpec, data: DataSplits, profile: HardwareProfile,
             out_dir: Path, cfg: PipelineConfig | None = None,
             progress: ProgressFn = no_progress, *, overwrite: bool = False,
             measure_layers: bool | None = None,
             device_table: dict[str, list[float]] | None = None,
             update_of: Plan | Path | str | None = None,
             allow_restructure: bool = False,
             latency_correction: Correction | None = None,
             device_tables: dict[str, dict[str, list[float]]] | None = None
             ) -> CompressionResult: ...


def compress(model: Any, *args: Any, **kwargs: Any) -> CompressionResult:
    """Compress ``model`` for ``profile`` under ``cfg.constraints``; see module doc.

    ``model`` is a PyTorch module (no ArchSpec needed) or a ``LoadedModel``; one whose
    ``module`` is None (an ONNX graph that did not convert) is compressed on the graph
    alone. ``example_input`` defaults to two validation samples; ``task`` names the task
    (``hadmc_core.tasks``).

    ``update_of`` (a deployed version's ``Plan``, its output directory or report.json)
    keeps that version's plan: the same kept channels, INT8 layers and, where accuracy
    allows, quantization parameters, fine-tuned from its weights (``hadmc_core.update``).
    When the plan cannot meet the constraints the result is not met and says so; with
    ``allow_restructure`` the model is then compressed afresh.

    ``device_table`` (a device's operator table, or a group's combined) estimates the
    latency; ``latency_correction`` scales its estimates by what the device's reported p50s
    showed (``hadmc_core.hal.feedback``); ``device_tables`` (each targeted device's own
    table by name) makes the report keep each one's uncorrected estimate per candidate
    (``device_table_ms``).
    """
    legacy = bool(args) and isinstance(args[0], ArchSpec)
    names = (("spec", "data", "profile", "out_dir", "cfg", "progress", "overwrite",
              "measure_layers", "device_table", "update_of", "allow_restructure")
             if legacy else
             ("data", "profile", "out_dir", "cfg", "progress"))
    if len(args) > len(names):
        raise TypeError(f"compress() takes at most {len(names) + 1} positional arguments")
    for name, value in zip(names, args, strict=False):
        if name in kwargs:
            raise TypeError(f"compress() got multiple values for argument {name!r}")
        kwargs[name] = value
    return _compress(model, **kwargs)


def _compress(model: nn.Module | LoadedModel, data: DataSplits, profile: HardwareProfile,
              out_dir: Path, cfg: PipelineConfig | None = None,
              progress: ProgressFn = no_progress, *, example_input: torch.Tensor | None = None,
              task: str = "classification", spec: ArchSpec | None = None,
              overwrite: bool = False, measure_layers: bool | None = None,
              device_table: dict[str, list[float]] | None = None,
              update_of: Plan | Path | str | None = None,
              allow_restructure: bool = False,
              latency_correction: Correction | None = None,
              device_tables: dict[str, dict[str, list[float]]] | None = None
              ) -> CompressionResult:
    started = time.monotonic()  # the time budget counts from here
    cfg = cfg or PipelineConfig()
    data = sized_validation(data, cfg)
    plan = (update_of if isinstance(update_of, Plan) or update_of is None
            else load_plan(update_of))
    the_task = tasks.get(task)
    loaded = model if isinstance(model, LoadedModel) else None
    module = loaded.module if loaded is not None else model
    spec = spec or (loaded.spec if loaded is not None else None)
    example = example_input if example_input is not None else torch.from_numpy(data.val.x[:2])
    backend, note = backend_for(profile)
    if module is None:
        assert loaded is not None
        _check_graph(loaded, data, the_task, backend)
    else:
        assert isinstance(module, nn.Module)
        _check_module(module, spec, example, data, the_task)
    tmp = _prepare_out(out_dir, overwrite)
    work = tmp / "work"
    work.mkdir()
    try:
        def run(plan: Plan | None, cfg: PipelineConfig) -> tuple[Context, Report]:
            ctx = pipeline.make_context(
                module, data, profile, cfg, work, progress, task=the_task, backend=backend,
                example=example, graph=loaded.onnx_path if loaded is not None else None,
                spec=spec, origin=_origin(model, spec),
                source_skipped=loaded.skipped if loaded is not None else None,
                measure_layers=measure_layers, device_table=device_table,
                profile_backend=note is None, latency_correction=latency_correction,
                device_tables=device_tables)
            ctx.started = started
            if note:
                ctx.warnings.append(note)
            if plan is None:
                rep = pipeline.Controller(ctx).run()
            else:
                ctx.state["update_plan"] = plan
                rep = update.UpdateController(ctx).run()
            prune_state = ctx.state.get("prune")
            record_kept(rep.layers, prune_state.groups if prune_state else None, plan)
            return ctx, rep

        ctx, rep = (_run_update(run, plan, cfg, allow_restructure, work) if plan
                    else run(None, cfg))
        best = next(c for c in ctx.candidates if c.chosen)
        assert best.path is not None
        with ctx.stage("references"):
            rep.references = references.measure(ctx, best, rep.compressed.accuracy)
        shutil.copyfile(best.path, tmp / "model.onnx")
        extra = _task_metrics(ctx, best.path)
        pipeline.cleanup(work)
        data_out = {**rep.to_dict(), **extra}
        report.write_json(tmp / "report.json", data_out)
        report.plot(tmp / "report.png", data_out)
        _finish(tmp, Path(out_dir))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CompressionResult(Path(out_dir), data_out, rep.met, rep.message)


def sized_validation(data: DataSplits, cfg: PipelineConfig) -> DataSplits:
    """``data`` with the validation split ``cfg.constraints.validation_images`` asks for."""
    cons = cfg.constraints
    want = cons.validation_images
    if want == "dataset":
        return data
    if want == "auto":
        want = decision.auto_validation_size(len(data.val), len(data.train),
                                             cons.max_accuracy_drop, cons.confidence)
    assert isinstance(want, int)
    if want < len(data.val):
        raise HadmcError(f"validation_images {want} is fewer than the dataset's own "
                         f"validation split ({len(data.val)} images); ask for at least that "
                         "many, or 'dataset'")
    return with_validation(data, want)


def _task_metrics(ctx: Context, chosen: Path) -> dict[str, Any]:
    """The report's ``metrics`` for a task that scores more than its constraint metric (a
    detector: mAP@0.5 and mAP@0.5:0.95 by COCOeval): the baseline's and the chosen
    model's, on the test split as the run's runtime gives them."""
    metrics = getattr(ctx.task, "metrics", None)
    if metrics is None or ctx.baseline_path is None:
        return {}
    test = ctx.data.test
    with ctx.stage("metrics"):
        return {"metrics": {
            name: {k: round(v, 3) for k, v in metrics(
                ctx.task.predict(ctx.backend, path, test.x, ctx.cfg.measure.threads),
                test).items()}
            for name, path in (("baseline", ctx.baseline_path), ("compressed", chosen))}}


def _run_update(run: Any, plan: Plan, cfg: PipelineConfig, allow_restructure: bool,
                work: Path) -> tuple[Context, Report]:
    """Compress within ``plan``; afresh when it cannot meet the constraints and
    ``allow_restructure`` says so. The report's ``update`` says which happened."""
    section: dict[str, Any] = {"of": plan.source, "allow_restructure": allow_restructure}
    try:
        ctx, rep = run(plan, dataclasses.replace(cfg, max_candidates=1))
    except PlanError as e:
        if not allow_restructure:
            raise
        why = str(e)
    else:
        section.update(ctx.state.get(update.STATE, {}))
        if rep.met:
            rep.update = {**section, "met_within_plan": True}
            return ctx, rep
        why = rep.message
        if not allow_restructure:
            rep.violations.append("the deployed version's structure cannot meet the "
                                  "constraints; allow restructuring (--allow-restructure) "
                                  "to choose channels and precisions afresh")
            rep.update = {**section, "met_within_plan": False}
            return ctx, rep
    log.info("the plan of %s cannot meet the constraints (%s); compressing afresh",
             plan.source, why)
    pipeline.cleanup(work)
    work.mkdir()
    ctx, rep = run(None, cfg)
    rep.update = {**section, "met_within_plan": False, "structure": "chosen afresh",
                  "why": why}
    return ctx, rep


def _origin(model: nn.Module | LoadedModel, spec: ArchSpec | None) -> dict[str, Any]:
    """The report's ``model``: where the model came from."""
    if isinstance(model, LoadedModel):
        return {"name": model.name, **model.origin, "kind": model.origin.get("kind", model.kind)}
    if spec is not None:
        return {"kind": "zoo", "name": spec.arch}
    cls = type(model)
    return {"kind": "module", "name": cls.__name__, "class": f"{cls.__module__}.{cls.__qualname__}"}


def _check_module(module: nn.Module, spec: ArchSpec | None, example: torch.Tensor,
                  data: DataSplits, task: tasks.Task) -> None:
    if spec is not None and data.in_channels != spec.in_channels:
        raise HadmcError(f"dataset has {data.in_channels} input channels but the model "
                         f"expects {spec.in_channels}")
    was_training = module.training
    try:
        with torch.no_grad():
            out = module.eval()(example)
    except Exception as e:
        raise HadmcError(f"the model does not run on the dataset's inputs (shape "
                         f"{tuple(example.shape[1:])}): {str(e).splitlines()[0]}") from e
    finally:
        module.train(was_training)
    out = out[0] if isinstance(out, tuple | list) else out
    task.check_model(tuple(out.shape), data)


def _check_graph(loaded: LoadedModel, data: DataSplits, task: tasks.Task, backend: Any) -> None:
    if loaded.onnx_path is None:
        raise HadmcError(f"model {loaded.name} has neither a PyTorch module nor an ONNX file")
    shape = tuple(data.train.x.shape[1:])
    if loaded.input_shape and tuple(loaded.input_shape) != shape:
        raise HadmcError(f"the dataset's inputs are {shape} but {loaded.name} takes "
                         f"{tuple(loaded.input_shape)}; adapt the dataset to the model's "
                         "input size")
    try:
        out = backend.predict(loaded.onnx_path, np.ascontiguousarray(data.val.x[:2]))
    except Exception as e:
        raise HadmcError(f"{backend.name} cannot run {loaded.onnx_path} on the dataset's "
                         f"inputs: {str(e).splitlines()[0]}") from e
    task.check_model(tuple(out[0].shape), data)


def baseline_warnings(base: ModelStats, num_classes: int) -> list[str]:
    """What is wrong with a classifier given to compress (report ``warnings``)."""
    from hadmc_core.tasks.classification import chance_warnings

    return chance_warnings(base.val_accuracy, num_classes)
