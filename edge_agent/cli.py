"""``hadmc-agent``: ``run`` (the daemon) and ``status`` (what the data directory holds).

Bad input gives one ``error: ...`` line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from edge_agent.errors import AgentError, SettingsError
from edge_agent.settings import AgentSettings

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="HAD-MC edge agent: keeps this device on its desired model version.")


def _settings(**flags: Any) -> AgentSettings:
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return AgentSettings(**given)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise SettingsError(f"invalid setting {field} (flag or HADMC_AGENT_"
                            f"{field.upper()}): {err['msg']}") from e


@app.command()
def run(server: str = typer.Option(None, "--server", help="Server URL [HADMC_AGENT_SERVER_URL]"),
        enroll_token: str = typer.Option(None, "--enroll-token",
                                         help="Enrollment token, first start only "
                                              "[HADMC_AGENT_ENROLLMENT_TOKEN]"),
        data_dir: Path = typer.Option(None, "--data-dir", help="[HADMC_AGENT_DATA_DIR]"),
        name: str = typer.Option(None, "--name", help="Device name [HADMC_AGENT_NAME]"),
        serve_port: int = typer.Option(None, "--serve-port",
                                       help="Loopback inference port, 0 = off"),
        log_level: str = typer.Option(None, "--log-level")) -> None:
    """Enroll once, then heartbeat, poll, update, report, and serve each model's active
    version."""
    from edge_agent.agent import Agent

    s = _settings(server_url=server, enrollment_token=enroll_token, data_dir=data_dir,
                  name=name, serve_port=serve_port, log_level=log_level)
    logging.basicConfig(level=s.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpcore"):  # one line per request otherwise
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))
    agent = Agent(s)
    agent.start()

    def stop(_sig: int, _frame: object) -> None:
        agent.loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run_forever()


@app.command()
def status(data_dir: Path = typer.Option(None, "--data-dir", help="[HADMC_AGENT_DATA_DIR]")
           ) -> None:
    """Print the device id, each model's active and previous versions and stable path, and
    the pending reports (JSON). The top-level version fields are the primary model's."""
    from edge_agent.layout import needs_migration
    from edge_agent.store import MODEL_FILE, Store

    s = _settings(data_dir=data_dir)
    store = Store(s.data_dir)
    if not store.root.is_dir():
        raise SettingsError(f"{store.root} does not exist; is --data-dir right?")
    creds = store.load_credentials()
    st = store.load_state()
    models = {}
    for key in sorted(set(st.models) | set(store.model_keys())):
        ms, mstore = st.models.get(key), store.model(key)
        models[key] = {"name": ms.name if ms else None, "current": mstore.current_vid(),
                       "active": ms.active if ms else None,
                       "previous": ms.previous if ms else None,
                       "on_probation": bool(ms and ms.probation), "held": mstore.held(),
                       "model_path": str(mstore.current / MODEL_FILE)}
    out = {"data_dir": str(store.root), "enrolled": creds is not None,
           "device_id": creds.device_id if creds else None,
           "server_url": creds.server_url if creds else None,
           "layout": "one model (moved to the per-model layout at the next start)"
           if needs_migration(store) else "per model",
           "primary": st.primary, "current": store.current_vid(), "active": st.active,
           "previous": st.previous,
           "held": models[st.primary]["held"] if st.primary in models else [],
           "highest": st.highest, "models": models,
           "model_path": str(store.current / MODEL_FILE),
           "pending_reports": len(st.pending_reports)}
    typer.echo(json.dumps(out, indent=2))


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="hadmc-agent", standalone_mode=False)
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except Exception as e:  # usage errors of typer's click, whichever copy it uses
        fmt = getattr(e, "format_message", None)
        if fmt is None:
            raise
        print(f"error: {fmt()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
