"""``hadmc profile`` commands."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Column, Table

from hadmc_core.cli._common import friendly, out

app = typer.Typer(no_args_is_help=True)


@app.command("list")
@friendly
def list_cmd() -> None:
    """List the built-in hardware profiles."""
    from hadmc_core.hal import builtin_profiles

    table = Table("accelerator", "cores", "precisions", "fp32 GOPS", "int8 GOPS", "GB/s",
                  "ch. multiple")
    table.columns.insert(0, Column("name", no_wrap=True))
    for name, p in sorted(builtin_profiles().items()):
        table.add_row(name, p.accelerator, str(p.cores), ",".join(p.precisions),
                      f"{p.peak_gops.get('fp32', 0):g}", f"{p.peak_gops.get('int8', 0):g}",
                      f"{p.memory_bandwidth_gbs:g}", str(p.channel_multiple))
    out.print(table)


@app.command("show")
@friendly
def show_cmd(name: str = typer.Argument(..., help="Built-in name or a YAML/JSON file.")) -> None:
    """Print a profile as YAML."""
    from hadmc_core.hal import load_profile

    out.print(load_profile(name).to_yaml(), end="", highlight=False)


@app.command("detect")
@friendly
def detect_cmd(
    name: str | None = typer.Option(None, help="Name for the profile (default local-HOST)."),
    out_file: Path | None = typer.Option(None, "--out", "-o", help="Also write it here."),
) -> None:
    """Build a profile for this machine (CPU flags, cores, memory, measured bandwidth)."""
    from hadmc_core.hal import detect_profile

    text = detect_profile(name).to_yaml()
    if out_file:
        out_file.write_text(text)
    out.print(text, end="", highlight=False)
