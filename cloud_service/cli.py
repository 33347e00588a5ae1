"""``hadmc serve|worker|db|token``: added to the ``hadmc`` app via the ``hadmc.cli`` group."""

from __future__ import annotations

import sys
from datetime import datetime
from enum import Enum

import typer

from cloud_service.fleetcli.options import JsonOpt, TokenOpt, TokensServerOpt

db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic migrations).")
token_app = typer.Typer(no_args_is_help=True, help="User API tokens.")


class RoleChoice(str, Enum):
    """``services.auth.ROLES`` (kept here so that ``hadmc`` starts without SQLAlchemy)."""

    viewer = "viewer"
    operator = "operator"
    admin = "admin"


def _settings():  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from cloud_service.settings import get_settings

    try:
        return get_settings()
    except ValidationError as e:
        typer.echo(f"error: invalid HADMC_ settings: {e.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from e


def _check_schema_or_exit(url: str) -> None:
    from cloud_service.errors import SchemaOutdatedError
    from cloud_service.migrate import check_schema

    try:
        check_schema(url)
    except SchemaOutdatedError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


def _prepare_schema_or_exit(url: str) -> None:
    """The embedded SQLite database is created and migrated here; any other is checked."""
    from alembic.util import CommandError

    from cloud_service.errors import SchemaOutdatedError
    from cloud_service.migrate import head_revision, prepare_schema

    try:
        was = prepare_schema(url)
    except (SchemaOutdatedError, CommandError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    if was is not None:
        typer.echo(f"migrated the SQLite database from revision {was or '(empty)'} to "
                   f"{head_revision()}", err=True)


def _check_store_or_exit(settings) -> None:  # type: ignore[no-untyped-def]
    from cloud_service.errors import ServiceError
    from cloud_service.s3store import make_store

    try:
        make_store(settings)
    except ServiceError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e


def serve(host: str = typer.Option("127.0.0.1", help="Address to bind."),
          port: int = typer.Option(8000, help="TCP port."),
          workers: int = typer.Option(1, min=1, help="uvicorn worker processes.")) -> None:
    """Run the REST API (and, without HADMC_BROKER_URL, an in-process job worker).

    The embedded SQLite database is created and migrated at start; any other database must
    be at the newest revision already (`hadmc db upgrade`).

    Connections are bounded: HADMC_MAX_CONNECTIONS per worker process, request headers
    within HADMC_HEADER_TIMEOUT_SECONDS, bodies within HADMC_BODY_TIMEOUT_SECONDS, JSON
    bodies up to HADMC_MAX_JSON_BODY_KB."""
    import uvicorn

    from cloud_service.httpserver import uvicorn_options

    settings = _settings()
    _prepare_schema_or_exit(settings.database_url)  # here, once, before any worker starts
    _check_store_or_exit(settings)
    from cloud_service.metrics import multiprocess_dir

    metrics_dir, made = multiprocess_dir(settings.prometheus_multiproc_dir, workers)
    try:
        uvicorn.run("cloud_service.app:create_app", factory=True, host=host, port=port,
                    workers=workers, log_level="info", access_log=False,
                    **uvicorn_options(settings))
    finally:
        if made and metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)


def worker(queues: str = typer.Option("", help="Comma-separated queues (default: HADMC_QUEUE)."),
           concurrency: int = typer.Option(1, min=1, help="Jobs run in parallel."),
           loglevel: str = typer.Option("INFO"),
           beat: bool = typer.Option(False, help="Also run Celery beat: the rollout scheduler "
                                                 "every HADMC_ROLLOUT_INTERVAL_SECONDS (one "
                                                 "worker per deployment).")) -> None:
    """Run a Celery worker that executes compression jobs (needs HADMC_BROKER_URL)."""
    from cloud_service.tasks import make_celery

    settings = _settings()
    if not settings.broker_url:
        typer.echo("error: HADMC_BROKER_URL is not set; `hadmc worker` needs a broker "
                   "(e.g. redis://127.0.0.1:6379/0); without one `hadmc serve` runs jobs "
                   "itself", err=True)
        raise typer.Exit(2)
    _check_schema_or_exit(settings.database_url)
    _check_store_or_exit(settings)
    app = make_celery(settings.broker_url, settings.queue, settings.rollout_interval_seconds)
    argv = ["worker", "-Q", queues or settings.queue, "-c", str(concurrency), "-P", "prefork",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
            "-n", f"hadmc-{settings.queue}@%h"]
    if beat:
        (settings.artifact_dir / "tmp").mkdir(parents=True, exist_ok=True)
        argv += ["--beat", "--schedule", str(settings.artifact_dir / "tmp" / "celerybeat")]
    app.worker_main(argv)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the database up to REVISION (default: the newest)."""
    from cloud_service import migrate

    migrate.upgrade(_settings().database_url, revision)


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument("-1")) -> None:
    """Migrate the database down to REVISION (default: one step; `base` = empty)."""
    from cloud_service import migrate

    migrate.downgrade(_settings().database_url, revision)


@db_app.command("current")
def db_current() -> None:
    """Print the database's revision and the newest one this code knows."""
    from cloud_service import migrate
    from cloud_service.db import make_engine

    url = _settings().database_url
    current, head = migrate.current_revision(make_engine(url)), migrate.head_revision()
    typer.echo(f"current: {current or '(empty)'}\nhead:    {head}")
    if current != head:
        typer.echo("the schema is outdated; run `hadmc db upgrade`")
        sys.exit(1)


@token_app.command("create")
def token_create(ctx: typer.Context,
                 user: str = typer.Option("admin", help="User the token belongs to."),
                 name: str = typer.Option("", help="A label for the token."),
                 role: RoleChoice = typer.Option(
                     RoleChoice.operator, help="viewer: read only; operator: also create and "
                     "change models, datasets, jobs, versions, devices, rollouts; admin: also "
                     "API tokens."),
                 expires_days: int | None = typer.Option(
                     None, min=1, help="Days until the token stops working (default: "
                                       "never; revoke it with `hadmc token revoke`)."),
                 server: TokensServerOpt = None, api_token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Create a user API token and print it (shown once; stored hashed). With --server:
    a token of the user of --token, over REST."""
    from cloud_service.fleetcli import tokens as rest

    if url := rest.remote(server, api_token, as_json):
        rest.create(ctx, url, api_token, name=name, expires_days=expires_days,
                   role=role.value, as_json=as_json)
        return
    from cloud_service.db import session_scope
    from cloud_service.services.auth import create_user_token

    settings = _settings()
    _prepare_schema_or_exit(settings.database_url)
    with session_scope(settings.database_url) as s:
        token = create_user_token(session=s, user_name=user, role=role.value,
                                  token_name=name, expires_in_days=expires_days)
    typer.echo(token)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "never"


@token_app.command("list")
def token_list(user: str = typer.Option("", help="Only this user's tokens."),
               server: TokensServerOpt = None, api_token: TokenOpt = None,
               as_json: JsonOpt = False) -> None:
    """List API tokens (never the secrets): id, user, role, name, created, expires, state.
    With --server: the tokens of the user of --token, over REST."""
    from cloud_service.fleetcli import tokens as rest

    if url := rest.remote(server, api_token, as_json):
        rest.list_(url, api_token, user=user, as_json=as_json)
        return
    from cloud_service.db import session_scope
    from cloud_service.services.auth import list_api_tokens, token_state, user_names

    settings = _settings()
    _check_schema_or_exit(settings.database_url)
    with session_scope(settings.database_url) as s:
        names = user_names(session=s)
        ids = [i for i, n in names.items() if n == user]
        if user and not ids:
            typer.echo(f"error: no user named {user!r}", err=True)
            raise typer.Exit(1)
        rows, _ = list_api_tokens(session=s, user_id=ids[0] if ids else None,
                                  limit=100_000)
        typer.echo(f"{'ID':>5}  {'USER':<16} {'ROLE':<8} {'NAME':<24} {'CREATED':<16}  "
                   f"{'EXPIRES':<16}  STATE")
        for r in rows:
            typer.echo(f"{r.id:>5}  {names.get(r.user_id, '?'):<16.16} {r.role:<8.8} "
                       f"{r.name:<24.24} "
                       f"{_when(r.created_at):<16}  {_when(r.expires_at):<16}  "
                       f"{token_state(r)}")


@token_app.command("revoke")
def token_revoke(token_id: int = typer.Argument(..., min=1, help="Id from `hadmc token list`."),
                 server: TokensServerOpt = None, api_token: TokenOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Revoke an API token: it stops working at once (401). With --server: one of the
    tokens of the user of --token, over REST."""
    from cloud_service.fleetcli import tokens as rest

    if url := rest.remote(server, api_token, as_json):
        rest.revoke(url, api_token, token_id, as_json=as_json)
        return
    from cloud_service.db import session_scope
    from cloud_service.errors import ConflictError
    from cloud_service.services.auth import revoke_api_token

    settings = _settings()
    _check_schema_or_exit(settings.database_url)
    try:
        with session_scope(settings.database_url) as s:
            row = revoke_api_token(session=s, token_id=token_id)
    except ConflictError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    if row is None:
        typer.echo(f"error: API token {token_id} does not exist (see `hadmc token list`)",
                   err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked API token {token_id}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.add_typer(db_app, name="db")
    app.add_typer(token_app, name="token")
