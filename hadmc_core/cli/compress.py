"""``hadmc compress``: run the whole pipeline on one machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from hadmc_core import references
from hadmc_core.cli._common import console, fail, friendly, out, progress_bar
from hadmc_core.errors import ConfigError, HadmcError

if TYPE_CHECKING:
    from hadmc_core.config import PipelineConfig


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_cmd)


def _load_config(path: Path | None, overrides: dict[str, Any]) -> PipelineConfig:
    from hadmc_core.config import PipelineConfig

    data: dict = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a JSON object, not "
                              f"{type(data).__name__}")
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    return PipelineConfig.from_dict(data)


def _count_or_word(value: str | None) -> int | str | None:
    """A CLI value that is a number or a word ("auto"): the number as an int."""
    return int(value) if value is not None and value.strip().isdigit() else value


MODEL_HELP = ("The model: a built-in architecture (resnet18, mobilenetv2, densenet), an ONNX "
              "file (model.onnx) or your factory 'package.module:function'.")


def _model_ref(model: str | None, arch: str | None, weights: Path | None) -> str:
    """The reference to load: --model, --arch (a built-in name) or the weights file alone."""
    from hadmc_core.errors import UnknownNameError
    from hadmc_core.models import ARCHITECTURES

    if arch is not None:
        if arch not in ARCHITECTURES:
            raise UnknownNameError("architecture", arch, list(ARCHITECTURES))
        if model is not None and model != arch:
            raise ConfigError(f"--arch {arch} and --model {model} name two models; --arch is "
                              "--model for a built-in architecture, give one of them")
        return arch
    if model is not None:
        return model
    if weights is not None:
        return str(weights)
    raise ConfigError("name the model: --model NAME|FILE.onnx|package.module:factory, or "
                      "--weights FILE.safetensors written by `hadmc train`")


def _internal_error(e: Exception) -> NoReturn:
    """An unexpected failure inside compression: one error line naming the exception and
    where its traceback was written, exit code 2; the output directory is not written."""
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="hadmc-compress-", suffix=".log",
                                     delete=False) as f:
        traceback.print_exception(e, file=f)
    frames = traceback.extract_tb(e.__traceback__)
    where = next((f"{Path(fr.filename).stem}.{fr.name}" for fr in reversed(frames)
                  if "hadmc_core" in fr.filename), None)
    at = f" in {where}" if where else ""
    fail(f"compression failed{at}: {type(e).__name__}: {' '.join(str(e).split())} "
         f"(an internal error, not your input; traceback in {f.name})")


def _print_result(result: Any) -> None:
    r = result.report
    b, c, s = r["baseline"], r["compressed"], r["summary"]
    metric = "% top-1" if r.get("metric", "top1") == "top1" else f" {r['metric']}"
    out.print(f"baseline   : {b['accuracy']:.2f}{metric}, {b['latency_ms']:.3f} ms, "
              f"{b['size_bytes'] / 1e6:.2f} MB")
    out.print(f"compressed : {c['accuracy']:.2f}{metric}, {c['latency_ms']:.3f} ms, "
              f"{c['size_bytes'] / 1e6:.2f} MB")
    out.print(f"drop {s['accuracy_drop_points']:.2f} pts, speedup {s['speedup']:.2f}x, "
              f"{s['compression']:.2f}x smaller -> {result.out_dir}")
    for line in references.lines(r.get("references") or {}):
        out.print(line)
    for warning in r.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@friendly
def compress_cmd(
    data: str = typer.Option(..., help="fashion-mnist, digits, a .npz file or an image folder."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    weights: Path | None = typer.Option(
        None, help="safetensors weights: of a built-in architecture (alone enough when "
                   "written by `hadmc train`), or of the factory's module."),
    model_args: str | None = typer.Option(
        None, help="JSON object of keyword arguments for the factory, e.g. '{\"width\": 2}'."),
    input_shape: str | None = typer.Option(
        None, help="The model's input C,H,W, e.g. 3,32,32. Needed for a factory (unless the "
                   "weights' metadata has 'input_shape') and for dynamic ONNX sizes other "
                   "than the dataset's."),
    arch: str | None = typer.Option(None, help="A built-in architecture: the same as --model "
                                    "NAME."),
    stem: str | None = typer.Option(None, help="Stem of a built-in architecture (small or "
                                    "imagenet; default: the weights' metadata, else small)."),
    width: float | None = typer.Option(None, help="Width of a built-in architecture "
                                       "(default: the weights' metadata, else 1.0)."),
    profile: str = typer.Option("local", help="Target hardware profile name or YAML path; "
                                "'local' detects this machine."),
    max_accuracy_drop: float = typer.Option(1.0, help="Largest allowed top-1 drop, points."),
    task: str = typer.Option("classification", help="classification or detect."),
    max_map_drop: float | None = typer.Option(
        None, help="Detection: largest allowed mAP@0.5 drop, points (the task's metric; "
                   "--max-accuracy-drop's name for detect)."),
    image_size: int | None = typer.Option(
        None, help="Detection: the square input side the data is read at (a multiple of "
                   "32; train and compress at the same)."),
    confidence: float | None = typer.Option(
        None, help="One-sided confidence that a candidate's drop is within the limit, from "
                   "a paired bound on the validation split (default 0.95; 0.5 = the point "
                   "estimate)."),
    validation_images: str | None = typer.Option(
        None, help="Validation images the accuracy decisions use: auto (default: enough for "
                   "the limit, taken from the training split where it can spare them), "
                   "dataset (its own split) or a number."),
    latency_budget_ms: float | None = typer.Option(None, help="Latency budget, ms at batch 1."),
    size_budget_mb: float | None = typer.Option(None, help="Model file size budget, MB."),
    time_budget_s: float | None = typer.Option(
        None, help="Wall seconds the job may take: pruned rungs stop when the next one, the "
                   "unpruned rung and the final measurements would not fit."),
    config: Path | None = typer.Option(None, help="Pipeline config JSON (see docs)."),
    no_prune: bool = typer.Option(False, help="Switch pruning off."),
    no_distill: bool = typer.Option(False, help="Switch distillation off."),
    no_quantize: bool = typer.Option(False, help="Switch quantization off."),
    search: str | None = typer.Option(
        None, help="Search strategy of pruning (and of precisions): greedy, evolution or rl "
                   "(default: the config's prune.search, greedy)."),
    distill_epochs: float | None = typer.Option(None, help="Distillation epochs."),
    distill_samples: int | None = typer.Option(None, help="Fine-tune subset size."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    update_of: Path | None = typer.Option(
        None, "--update-of", help="Compress as an update of a deployed version (its output "
        "directory or report.json): keep its channels, INT8 layers and, where accuracy "
        "allows, its quantization parameters, so the device's delta stays small."),
    allow_restructure: bool = typer.Option(
        False, help="With --update-of: when the deployed structure cannot meet the "
        "constraints, choose channels and precisions afresh."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Compress a trained model for a target device under accuracy/latency/size limits.

    The dataset's images are fitted to the model's input; one line says how.
    """
    from hadmc_core import tasks
    from hadmc_core.compress import compress
    from hadmc_core.data import load_dataset
    from hadmc_core.hal import detect_profile, load_profile
    from hadmc_core.plan import load_plan
    from hadmc_core.prepare import parse_model_args, parse_shape, prepare

    overrides = {"prune.enabled": False if no_prune else None,
                 "distill.enabled": False if no_distill else None,
                 "quantize.enabled": False if no_quantize else None,
                 "prune.search": search,
                 "distill.epochs": distill_epochs, "distill.samples": distill_samples,
                 "constraints.max_accuracy_drop": (max_accuracy_drop if max_map_drop is None
                                                   else max_map_drop),
                 "constraints.confidence": confidence,
                 "constraints.validation_images": _count_or_word(validation_images),
                 "constraints.latency_budget_ms": latency_budget_ms,
                 "constraints.size_budget_mb": size_budget_mb,
                 "constraints.time_budget_s": time_budget_s}
    cfg = _load_config(config, overrides)
    ref = _model_ref(model, arch, weights)
    args = parse_model_args(model_args)
    shape = parse_shape(input_shape, "--input-shape") if input_shape else None
    prof = detect_profile() if profile == "local" else load_profile(profile)
    ds = (tasks.get(task).load_data(data, image_size=image_size) if task != "classification"
          else load_dataset(data))
    loaded, ds, note = prepare(ref, ds, task=task, weights=weights, model_args=args,
                               input_shape=shape, stem=stem, width=width)
    if note:
        console.print(note, highlight=False, soft_wrap=True)
    if allow_restructure and update_of is None:
        raise ConfigError("--allow-restructure needs --update-of")
    update: dict[str, Any] = ({"update_of": load_plan(update_of),
                               "allow_restructure": allow_restructure}
                              if update_of is not None else {})
    with progress_bar(not quiet) as prog:
        try:
            result = compress(loaded, ds, prof, out_dir, cfg, prog, overwrite=overwrite,
                              task=task, **update)
        except HadmcError:
            raise
        except Exception as e:  # a defect: one line, the traceback kept in a file
            _internal_error(e)
    _print_result(result)
    if not result.met:
        console.print(f"[bold yellow]warning:[/] {result.message}", highlight=False)
        raise typer.Exit(3)
