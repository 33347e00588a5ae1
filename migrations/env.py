"""Alembic environment: the URL comes from the caller or from HADMC_DATABASE_URL."""

from __future__ import annotations

from alembic import context

from cloud_service import models  # noqa: F401  (registers the tables)
from cloud_service.db import Base, make_engine
from cloud_service.settings import Settings

config = context.config
url = config.attributes.get("database_url") or Settings().database_url


def _configure(**kw: object) -> None:
    context.configure(
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=url.startswith("sqlite"),
        **kw,
    )  # type: ignore[arg-type]


if context.is_offline_mode():
    _configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url)
    with engine.connect() as connection:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
