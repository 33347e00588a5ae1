"""``hadmc train``: train a baseline and write safetensors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from hadmc_core.cli._common import friendly, out, progress_bar


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)


@friendly
def train_cmd(
    arch: str = typer.Option(..., help="Architecture: resnet18, mobilenetv2, densenet."),
    data: str = typer.Option(..., help="fashion-mnist, digits, a .npz file or an image folder."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file."),
    stem: str = typer.Option("small", help="'small' (28-64px inputs) or 'imagenet'."),
    width: float = typer.Option(1.0, help="Channel width multiplier."),
    epochs: float = typer.Option(1.0, help="Epochs (fractions allowed)."),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1, help="Peak learning rate of the one-cycle schedule."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Train a baseline model on a dataset and save it as safetensors."""
    from hadmc_core.data import load_dataset
    from hadmc_core.models import ArchSpec, build_model, save_weights
    from hadmc_core.train import TrainConfig, evaluate, fit

    ds = load_dataset(data)
    spec = ArchSpec(arch, ds.in_channels, ds.num_classes, stem, width)
    model = build_model(spec)
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
               "train_seconds": round(seconds, 1), "epochs": epochs}
    out_path.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    out.print_json(json.dumps(summary))
