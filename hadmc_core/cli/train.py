"""``hadmc train``: train a baseline and write safetensors."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import typer

from hadmc_core.cli._common import console, friendly, out, progress_bar


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)


@friendly
def train_cmd(
    arch: str = typer.Option(..., "--arch", "--model",
                             help="Architecture: resnet18, mobilenetv2, densenet; detectors "
                                  "(--task detect): yolo-n, yolo-s."),
    data: str = typer.Option(..., help="fashion-mnist, digits, a .npz file or an image folder; "
                                       "detection: fashion-mnist-scenes, a COCO or YOLO "
                                       "folder."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    stem: str = typer.Option("small", help="'small' (28-64px inputs) or 'imagenet'."),
    width: float = typer.Option(1.0, help="Channel width multiplier."),
    epochs: float | None = typer.Option(
        None, min=0.001, help="Epochs (fractions allowed). Default: enough whole epochs for at "
                             "least 100 optimizer steps (one epoch at least)."),
    batch_size: int | None = typer.Option(None, help="Default 128 (detection: 32)."),
    lr: float | None = typer.Option(None, help="Peak learning rate of the one-cycle schedule "
                                               "(default 0.1; detection: 0.01)."),
    task: str = typer.Option("classification", help="classification or detect."),
    image_size: int | None = typer.Option(
        None, help="Detection: the square input side (a multiple of 32; default 128 for "
                   "fashion-mnist-scenes, 320 for folders)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train a baseline model on a dataset and save it as safetensors."""
    if task == "detect":
        _train_detector(arch, data, out_path, width, epochs, batch_size or 32, lr or 0.01,
                        seed, device, quiet, image_size)
        return
    if task != "classification":
        from hadmc_core import tasks

        tasks.get(task)  # an unknown name lists the valid ones
    batch_size, lr = batch_size or 128, lr or 0.1
    from hadmc_core.data import load_dataset
    from hadmc_core.models import ArchSpec, build_model, save_weights
    from hadmc_core.train import TrainConfig, evaluate, fit

    ds = load_dataset(data)
    spec = ArchSpec(arch, ds.in_channels, ds.num_classes, stem, width)
    model = build_model(spec)
    epochs, steps, why = _length(epochs, len(ds.train), batch_size)
    if not quiet:
        console.print(f"training {arch} on {data}: {epochs:g} epochs of {len(ds.train)} "
                      f"samples, {steps} steps of {batch_size} ({why})", highlight=False,
                      soft_wrap=True)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    t0 = time.perf_counter()
    with progress_bar(not quiet) as prog:
        fit(model, ds.train, cfg, progress=prog)
    seconds = time.perf_counter() - t0
    val = evaluate(model, ds.val)
    test = evaluate(model, ds.test)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model.cpu(), out_path, spec)
    summary = {"weights": str(out_path), "arch": spec.to_dict(), "dataset": data,
               "val_accuracy": round(val, 2), "test_accuracy": round(test, 2),
               "train_seconds": round(seconds, 1), "epochs": epochs, "steps": steps}
    out_path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    out.print_json(json.dumps(summary))
    _warn_if_near_chance(val, ds.num_classes)


def _train_detector(arch: str, data: str, out_path: Path, width: float, epochs: float | None,
                    batch_size: int, lr: float, seed: int, device: str, quiet: bool,
                    image_size: int | None) -> None:
    import tempfile

    from hadmc_core.data.detection import load_detection
    from hadmc_core.models import ArchSpec, build_model, save_weights
    from hadmc_core.train import TrainConfig, evaluate_detector, fit_detector

    ds = load_detection(data, image_size)
    spec = ArchSpec(arch, ds.in_channels, ds.num_classes, "small", width)
    model = build_model(spec)
    epochs, steps, why = _length(epochs, len(ds.train), batch_size)
    side = ds.image_size[0]
    if not quiet:
        console.print(f"training {arch} (detect) on {data} at {side}x{side}: {epochs:g} "
                      f"epochs of {len(ds.train)} images, {steps} steps of {batch_size} "
                      f"({why})", highlight=False, soft_wrap=True)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    t0 = time.perf_counter()
    with progress_bar(not quiet) as prog:
        losses = fit_detector(model, ds.train, cfg, progress=prog)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        scores = evaluate_detector(model, ds, Path(tmp))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model.cpu(), out_path, spec)
    summary = {"weights": str(out_path), "task": "detect", "arch": spec.to_dict(),
               "dataset": data, "image_size": side, "classes": ds.class_names, **scores,
               "loss_first": round(losses[0], 4) if losses else None,
               "loss_last": round(losses[-1], 4) if losses else None,
               "train_seconds": round(seconds, 1), "epochs": epochs, "steps": steps}
    out_path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    out.print_json(json.dumps(summary))


def _length(epochs: float | None, samples: int, batch_size: int) -> tuple[float, int, str]:
    """Epochs, optimizer steps, and where the length came from."""
    from hadmc_core.train import MIN_DEFAULT_STEPS, default_epochs

    why = "--epochs"
    if epochs is None:
        epochs = float(default_epochs(samples, batch_size))
        why = f"default: at least {MIN_DEFAULT_STEPS} steps; --epochs to choose"
    return epochs, max(1, round(epochs * math.ceil(samples / batch_size))), why


def _warn_if_near_chance(val: float, num_classes: int) -> None:
    from hadmc_core.train import chance_accuracy, near_chance

    if near_chance(val, num_classes):
        console.print(f"[bold yellow]warning:[/] validation top-1 {val:.1f}% is near chance "
                      f"({chance_accuracy(num_classes):.1f}% for {num_classes} classes): the "
                      "model has learned next to nothing; train longer (--epochs) or check "
                      "the data", highlight=False, soft_wrap=True)
