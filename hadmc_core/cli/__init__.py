"""The ``hadmc`` console script. Sub-commands live in sibling modules.

Other packages add commands through the ``hadmc.cli`` entry-point group (a callable that
takes the typer app), so this library never imports them: ``cloud_service`` adds
``serve``, ``worker``, ``db`` and ``token`` that way.
"""

from __future__ import annotations

import logging
import sys
from importlib.metadata import entry_points

import typer

from hadmc_core.cli import _common

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="HAD-MC: hardware-aware model compression and delta updates.")


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    _registered = True
    from hadmc_core.cli import compress, delta, profile, train

    train.register(app)
    compress.register(app)
    app.add_typer(profile.app, name="profile", help="Hardware profiles of target devices.")
    app.add_typer(delta.app, name="delta", help="Signed, tensor-aware incremental updates.")
    app.add_typer(delta.keys_app, name="keys", help="Ed25519 signing keys.")
    for ep in entry_points(group="hadmc.cli"):
        try:
            ep.load()(app)
        except ImportError as e:  # an extra that is not installed
            logging.getLogger(__name__).debug("CLI plugin %s not loaded: %s", ep.name, e)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except _common.HANDLED as e:  # pragma: no cover - typer usually exits before this
        _common.fail(e)
    sys.exit(0)
