"""The fleet CLI: ``hadmc devices|versions|rollouts|jobs`` over the REST API.

Added to the ``hadmc`` app through the ``hadmc.cli`` entry-point group. It talks HTTP only
(httpx and typer; no FastAPI or SQLAlchemy), so it starts fast and runs on an operator's
machine with ``--server`` / ``HADMC_SERVER`` and ``--token`` / ``HADMC_TOKEN``. ``hadmc
token`` lives in ``cloud_service.cli`` and uses ``fleetcli.tokens`` when a server is given.
Exit codes: 0 ok, 1 failed outcome or refused by the API, 2 bad usage or input, 3 server
unreachable, 4 not found (``docs/cli.md``).
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from cloud_service.fleetcli import devices, jobs, rollouts, versions

    app.add_typer(devices.app, name="devices")
    app.add_typer(versions.app, name="versions")
    app.add_typer(rollouts.app, name="rollouts")
    app.add_typer(jobs.app, name="jobs")
