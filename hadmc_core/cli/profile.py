"""``hadmc profile`` commands: list, show and detect hardware profiles."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.table import Table

from hadmc_core.cli._common import console, friendly, out
from hadmc_core.fsutil import write_atomic

app = typer.Typer(no_args_is_help=True, help="Hardware profiles (targets for compression).")


def _gops(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


@app.command("list")
@friendly
def list_cmd() -> None:
    """List the built-in hardware profiles."""
    from hadmc_core.hal import builtin_profiles

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("accel.", no_wrap=True)
    table.add_column("cores", justify="right", no_wrap=True)
    table.add_column("precisions", min_width=9)
    for col in ("int8 GOPS", "fp32 GOPS", "GB/s"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, p in sorted(builtin_profiles().items()):
        table.add_row(name, p.accelerator, str(p.cores), " ".join(p.precisions),
                      _gops(p.peak_gops.get("int8")), _gops(p.peak_gops.get("fp32")),
                      f"{p.memory_bandwidth_gbs:g}")
    out.print(table)
    out.print("GOPS: peak, 1 MAC = 2 ops. Sources: hadmc profile show NAME", highlight=False)


@app.command("show")
@friendly
def show_cmd(
    name: str = typer.Argument(..., help="Built-in name or a .yaml/.json profile file."),
) -> None:
    """Print a profile as YAML."""
    from hadmc_core.hal import load_profile

    out.out(load_profile(name).to_yaml(), end="", highlight=False)


@app.command("detect")
@friendly
def detect_cmd(
    name: str | None = typer.Option(None, "--name", help="Profile name (default local-HOST)."),
    out_file: Path | None = typer.Option(None, "--out", "-o", help="Also write the YAML here."),
) -> None:
    """Build a profile for this machine (CPU flags, cores, memory, measured bandwidth)."""
    from hadmc_core.hal import detect_profile

    text = detect_profile(name).to_yaml()
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out_file, text.encode())
        console.print(f"wrote {out_file}", highlight=False)
    out.out(text, end="", highlight=False)
