"""Options shared by every fleet command (``--server``, ``--token``, ``--json``).

Kept free of httpx so that ``cloud_service.cli`` can declare them on ``hadmc token``
without slowing down every other command."""

from __future__ import annotations

from typing import Annotated

import typer

ServerOpt = Annotated[str | None, typer.Option(
    "--server", metavar="URL", show_default=False,
    help="HAD-MC server URL (env HADMC_SERVER; default http://127.0.0.1:8000).")]
TokenOpt = Annotated[str | None, typer.Option(
    "--token", metavar="TOKEN", show_default=False,
    help="User API token (env HADMC_TOKEN).")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print the API's JSON answer instead of a table.")]
TokensServerOpt = Annotated[str | None, typer.Option(
    "--server", metavar="URL", show_default=False,
    help="Manage your tokens on this server over REST (env HADMC_SERVER); without it, "
         "the local database.")]
OffsetOpt = Annotated[int, typer.Option(min=0, help="Skip this many.")]
#: Page sizes as the API allows them: 500 for most lists, 1000 for the wide ones.
LimitOpt = Annotated[int, typer.Option(min=1, max=500, help="At most this many.")]
WideLimitOpt = Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")]
