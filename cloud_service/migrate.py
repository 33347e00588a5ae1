"""Alembic, driven from code: ``hadmc db upgrade``, the start-up schema check, and the
embedded SQLite database migrated at start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, make_url

from cloud_service.db import make_engine
from cloud_service.errors import SchemaOutdatedError

# Shipped inside the package (package data), so an installed wheel migrates from any
# working directory; no alembic.ini is read.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """The Alembic configuration, built in code from the package's migrations folder."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "-1") -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(database_url: str, engine: Engine | None = None) -> None:
    """Raise SchemaOutdatedError unless the database is at the head revision."""
    engine = engine or make_engine(database_url)
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutdatedError(
            f"the database schema is at revision {current or '(empty)'} but this HAD-MC "
            f"needs {head}; run `hadmc db upgrade` (with the same HADMC_DATABASE_URL) first")


def is_embedded(database_url: str) -> bool:
    """Whether the database is the embedded default's kind: a SQLite file on this machine."""
    return make_url(database_url).get_backend_name() == "sqlite"


def prepare_schema(database_url: str) -> str | None:
    """Bring the database to the head revision at start, where that is safe.

    An embedded SQLite database (one file, one machine) is created and migrated here;
    returns the revision it was at (``""`` when empty) or None when it already was at
    head. Any other database (shared, possibly by several servers at once) is only
    checked: SchemaOutdatedError says to run ``hadmc db upgrade``."""
    if not is_embedded(database_url):
        check_schema(database_url)
        return None
    engine = make_engine(database_url)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    if current == head_revision():
        return None
    if current is not None and current not in _known_revisions():
        check_schema(database_url)  # newer than this code: refused, not migrated
    upgrade(database_url)
    return current or ""


def _known_revisions() -> set[str]:
    return {s.revision for s in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
