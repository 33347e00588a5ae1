"""The ``hadmc`` console script. Sub-commands live in sibling modules."""

from __future__ import annotations

import logging
import sys

import typer

from hadmc_core.cli import _common

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="HAD-MC: hardware-aware model compression and delta updates.")


def _register() -> None:
    from hadmc_core.cli import compress, delta, profile, train

    train.register(app)
    compress.register(app)
    app.add_typer(profile.app, name="profile", help="Hardware profiles of target devices.")
    app.add_typer(delta.app, name="delta", help="Signed, tensor-aware incremental updates.")
    app.add_typer(delta.keys_app, name="keys", help="Ed25519 signing keys.")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except _common.HANDLED as e:  # pragma: no cover - typer usually exits before this
        _common.fail(e)
    sys.exit(0)
