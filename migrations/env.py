"""Alembic environment for sauce_sql: one sessions table per run, its name a parameter.

Run by ``Store.start()`` and ``sauce-sql migrate`` on their own connection (passed in
``config.attributes``), or by the ``alembic`` command, which takes the database from
``-x url=...``, else SAUCE_SQL_URL, else ``sqlalchemy.url`` in alembic.ini, and the
table from ``-x table_name=...``, else SAUCE_SQL_TABLE, else ``sessions``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, MetaData

from sauce_sql import migrate, validation
from sauce_sql.engine import create_store_engine, parse_url
from sauce_sql.schema import store_tables

config = context.config
if config.config_file_name is not None and not config.attributes.get("connection"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# The table comes from the caller, or from the command line and environment.
table_name = validation.table_name(
    config.attributes.get("table_name")
    or migrate.table_from_environment(context.get_x_argument(as_dictionary=True))
)
config.attributes["table_name"] = table_name  # read by the migration scripts
target_metadata = MetaData()
ours = {table.name for table in store_tables(table_name, target_metadata)}


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Compare only this table and its history and aggregates: other tables (other
    session tables, history partitions) are not ours."""
    return type_ != "table" or name in ours


def configure(**options: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=migrate.version_table(table_name),
        render_as_batch=True,  # SQLite alters tables by copying them
        include_name=include_name,
        **options,
    )


def run_online(connection: Connection) -> None:
    configure(connection=connection)
    # Within a transaction begun by the caller this is a no-op; otherwise it is ours.
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("SAUCE_SQL_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("no database URL: pass -x url=..., or set SAUCE_SQL_URL")
    return url


if context.is_offline_mode():
    configure(url=database_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := config.attributes.get("connection")) is not None:
    run_online(given)
else:
    engine = create_store_engine(parse_url(database_url()), durability="normal")
    try:
        with (
            engine.connect() as connection,
            migrate.migration_transaction(connection, table_name),
        ):
            run_online(connection)
    finally:
        engine.dispose()
