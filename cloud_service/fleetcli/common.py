"""What every fleet command shares: connecting, one-line errors, tables and JSON."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer

from cloud_service.fleetcli.client import FleetClient, FleetError, UsageError
from cloud_service.fleetcli.settings import DEFAULT_SERVER, FleetCliSettings

F = TypeVar("F", bound=Callable[..., Any])


def settings() -> FleetCliSettings:
    from pydantic import ValidationError

    try:
        return FleetCliSettings()
    except ValidationError as e:
        raise UsageError(f"invalid HADMC_ settings: {e.errors()[0]['msg']}") from e


def connect(server: str | None, token: str | None) -> FleetClient:
    """A client for ``--server``/``HADMC_SERVER`` with ``--token``/``HADMC_TOKEN``."""
    cfg = settings()
    token = token or cfg.token
    if not token:
        raise UsageError("no API token: pass --token or set HADMC_TOKEN (an admin creates "
                         "one with `hadmc token create` on the server)")
    return FleetClient(server or cfg.server or DEFAULT_SERVER, token,
                       timeout=cfg.http_timeout_seconds)


def friendly(fn: F) -> F:
    """Turn a :class:`FleetError` into one ``error:`` line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FleetError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def when(value: str | None) -> str:
    """An API timestamp (ISO 8601, UTC) as ``YYYY-MM-DD HH:MM``."""
    if not value:
        return "-"
    return value[:16].replace("T", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
          right: Sequence[str] = ()) -> str:
    """Columns aligned with two spaces; ``right`` names the columns aligned right."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if h in right else v.ljust(w)
                 for v, w, h in zip(values, widths, headers, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def show(pairs: Sequence[tuple[str, Any]]) -> str:
    """``key: value`` lines with the values aligned."""
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {cell(v)}" for k, v in pairs)


def counts(by_status: dict[str, int]) -> str:
    """``{"assigned": 2, "succeeded": 1}`` as ``assigned 2  succeeded 1``."""
    return "  ".join(f"{k} {v}" for k, v in sorted(by_status.items()) if v) or "-"
