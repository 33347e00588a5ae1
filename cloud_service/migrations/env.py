"""Alembic environment: the URL comes from the caller or from HADMC_DATABASE_URL."""

from __future__ import annotations

from typing import Any

from alembic import context

from cloud_service import models  # noqa: F401  (registers the tables)
from cloud_service.db import Base, make_engine
from cloud_service.settings import Settings

config = context.config
url = config.attributes.get("database_url") or Settings().database_url


def _configure(**kw: Any) -> None:
    context.configure(
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=url.startswith("sqlite"),
        **kw,
    )


if context.is_offline_mode():
    _configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = make_engine(url)
    sqlite = url.startswith("sqlite")
    with engine.connect() as connection:
        if sqlite:  # batch mode copies a table and drops the old one, which a reference
            # from another table's rows would refuse; the check below runs at the end
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
            if broken:
                raise RuntimeError(f"the migration left rows with broken references: "
                                   f"{broken[:5]}")
    engine.dispose()
