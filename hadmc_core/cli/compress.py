"""``hadmc compress``: run the whole pipeline on one machine."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from hadmc_core.cli._common import console, friendly, out, progress_bar
from hadmc_core.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("compress")(compress_cmd)


def _load_config(path: Path | None, overrides: dict) -> object:
    from hadmc_core.config import PipelineConfig

    data: dict = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})[key] = value
    return PipelineConfig.from_dict(data)


@friendly
def compress_cmd(
    weights: Path = typer.Option(..., help="Trained weights (.safetensors) to compress."),
    data: str = typer.Option(..., help="fashion-mnist, digits, a .npz file or an image folder."),
    profile: str = typer.Option("local", help="Target hardware profile name or YAML path; "
                                "'local' detects this machine."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    arch: str | None = typer.Option(None, help="Architecture (default: from the weights' "
                                    "metadata)."),
    stem: str = typer.Option("small", help="Stem used when --arch is given."),
    width: float = typer.Option(1.0, help="Width used when --arch is given."),
    max_accuracy_drop: float = typer.Option(1.0, help="Largest allowed top-1 drop, points."),
    latency_budget_ms: float | None = typer.Option(None, help="Latency budget, ms at batch 1."),
    size_budget_mb: float | None = typer.Option(None, help="Model file size budget, MB."),
    config: Path | None = typer.Option(None, help="Pipeline config JSON (see docs)."),
    no_prune: bool = typer.Option(False, help="Switch pruning off."),
    no_distill: bool = typer.Option(False, help="Switch distillation off."),
    no_quantize: bool = typer.Option(False, help="Switch quantization off."),
    distill_epochs: float | None = typer.Option(None, help="Distillation epochs."),
    distill_samples: int | None = typer.Option(None, help="Fine-tune subset size."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Compress a trained model for a target device under accuracy/latency/size limits."""
    from hadmc_core.compress import compress
    from hadmc_core.data import load_dataset
    from hadmc_core.hal import detect_profile, load_profile
    from hadmc_core.models import ArchSpec, load_model

    overrides = {"prune.enabled": False if no_prune else None,
                 "distill.enabled": False if no_distill else None,
                 "quantize.enabled": False if no_quantize else None,
                 "distill.epochs": distill_epochs, "distill.samples": distill_samples,
                 "constraints.max_accuracy_drop": max_accuracy_drop,
                 "constraints.latency_budget_ms": latency_budget_ms,
                 "constraints.size_budget_mb": size_budget_mb}
    cfg = _load_config(config, overrides)
    prof = detect_profile() if profile == "local" else load_profile(profile)
    ds = load_dataset(data)
    spec = ArchSpec(arch, ds.in_channels, ds.num_classes, stem, width) if arch else None
    model, spec = load_model(weights, spec)
    with progress_bar(not quiet) as prog:
        result = compress(model, spec, ds, prof, out_dir, cfg, prog, overwrite=overwrite)
    r = result.report
    b, c, s = r["baseline"], r["compressed"], r["summary"]
    out.print(f"baseline   : {b['accuracy']:.2f}% top-1, {b['latency_ms']:.3f} ms, "
              f"{b['size_bytes'] / 1e6:.2f} MB")
    out.print(f"compressed : {c['accuracy']:.2f}% top-1, {c['latency_ms']:.3f} ms, "
              f"{c['size_bytes'] / 1e6:.2f} MB")
    out.print(f"drop {s['accuracy_drop_points']:.2f} pts, speedup {s['speedup']:.2f}x, "
              f"{s['compression']:.2f}x smaller -> {result.out_dir}")
    for warning in r.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if not result.met:
        console.print(f"[bold yellow]warning:[/] {result.message}", highlight=False)
        raise typer.Exit(3)
