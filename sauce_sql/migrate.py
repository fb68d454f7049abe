"""Alembic as an API: bring a database's sessions table to the current schema.

The schema is owned by the migrations in ``migrations/`` (shipped inside the wheel as
``sauce_sql/_migrations``). The table name is a parameter and every table keeps its own
version table, ``alembic_version_<table>``, so several session tables can live in one
database and be migrated each on its own. Migrations run under a lock (SQLite's write
lock, a PostgreSQL advisory lock) so that app servers starting together migrate once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect

from sauce_sql.backends import backend_for
from sauce_sql.errors import SchemaConflict
from sauce_sql.redact import shown
from sauce_sql.schema import sessions_table

__all__ = [
    "check",
    "current",
    "downgrade",
    "make_config",
    "make_current",
    "is_current",
    "migration_transaction",
    "script_location",
    "upgrade",
    "version_table",
]


def script_location() -> Path:
    """Where the migration scripts are: inside the installed package, or the checkout."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"no migrations beside {package}")


def version_table(table_name: str) -> str:
    """The Alembic version table that belongs to ``table_name``."""
    return f"alembic_version_{table_name}"


def make_config(table_name: str, connection: Connection | None = None) -> Config:
    """An Alembic config for ``table_name``, running on ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["table_name"] = table_name
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _revisions(location: str) -> tuple[str | None, frozenset[str]]:
    """The latest revision and every revision of the scripts at ``location``, read
    once per process: reading them loads each script, and they do not change while
    it runs."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", location)
    script = ScriptDirectory.from_config(config)
    return script.get_current_head(), frozenset(r.revision for r in script.walk_revisions())


#: Says which step of the schema work begins (see make_current).
Step = Callable[[str], None]


def _no_step(_doing: str) -> None:
    pass


@contextmanager
def migration_transaction(
    connection: Connection,
    table_name: str,
    *,
    lock_wait: float | None = None,
    step: Step = _no_step,
) -> Iterator[None]:
    """One transaction holding the lock that keeps concurrent migrations apart.

    The lock is the backend's (``Backend.migration_lock``): SQLite's write lock; on
    PostgreSQL an advisory lock, waited for without bound, or with ``lock_wait`` for
    at most that many seconds (then StoreUnavailable says another session holds it).
    InvalidInput for a database sauce_sql does not run on, before anything is done.
    """
    lock = backend_for(connection.dialect.name).migration_lock
    with lock(connection, table_name, lock_wait, step):
        yield


def _run(engine: Engine, table_name: str, action: Any, *args: Any) -> None:
    backend_for(engine.dialect.name)  # refused before connecting (which may create a file)
    with engine.connect() as connection, migration_transaction(connection, table_name):
        action(make_config(table_name, connection), *args)


def upgrade(engine: Engine, table_name: str, revision: str = "head") -> None:
    """Upgrade ``table_name`` to ``revision`` (the latest by default)."""
    _run(engine, table_name, command.upgrade, revision)


def is_current(engine: Engine, table_name: str) -> bool:
    """Whether ``table_name`` is at the latest revision, asked without a transaction.

    So a store starting on an up-to-date schema runs no migration and opens no
    transaction, which a pooler in statement mode would refuse. Raises
    :class:`SchemaConflict` if the table is not one sauce_sql can migrate or use.
    """
    head, known = _revisions(str(script_location()))
    read_schema = backend_for(engine.dialect.name).read_schema
    with engine.connect() as connection:
        read_schema(connection)
        revision = _owned_revision(connection, table_name, known)
        if revision == head:
            _check_columns(connection, table_name)
        return revision == head


def _owned_revision(connection: Connection, table_name: str, known: frozenset[str]) -> str | None:
    """The revision ``table_name`` is at (None: not created yet); SchemaConflict if
    the table is another application's or at a revision this sauce_sql does not know."""
    inspector = inspect(connection)
    # The table first: a migration creates it and its version table in one
    # transaction, so a table seen here has its revision readable below.
    present = inspector.has_table(table_name)
    versions = version_table(table_name)
    context = MigrationContext.configure(connection, opts={"version_table": versions})
    revision = context.get_current_revision()
    if revision is None:
        if present:
            raise SchemaConflict(
                f"table {table_name!r} already exists but has no {versions!r}: it is another "
                "application's table, which sauce_sql leaves alone; give the store another "
                "table_name"
            )
        # PostgreSQL keeps quoted names apart from the lower-case ones sauce_sql uses.
        for other in inspector.get_table_names():
            if other.lower() == table_name and other != table_name:
                raise SchemaConflict(
                    f"table {table_name!r} does not exist but {other!r} does: sauce_sql folds "
                    f"table names to lower case; rename {other!r} and {version_table(other)!r} "
                    "to lower case, or give the store another table_name"
                )
        return None
    if revision not in known:
        raise SchemaConflict(
            f"table {table_name!r} is at schema revision {shown(revision)}, which this "
            "sauce_sql does not know: a newer sauce_sql migrated it; upgrade sauce_sql to "
            "use it, or give the store another table_name"
        )
    # Not there a moment ago, but its revision is: another process's migration may have
    # committed between the two reads (each its own snapshot, in autocommit). A fresh
    # look tells that from a table dropped by hand.
    if not present and not inspect(connection).has_table(table_name):
        raise SchemaConflict(
            f"table {table_name!r} does not exist, yet {versions!r} says it is at revision "
            f"{shown(revision)}: it was dropped by hand; drop {versions!r} too (the store "
            "then creates the table afresh), or give the store another table_name"
        )
    return revision


def _check_columns(connection: Connection, table_name: str) -> None:
    """SchemaConflict if the table at the latest revision lacks one of its columns."""
    present = {column["name"] for column in inspect(connection).get_columns(table_name)}
    missing = [column.name for column in sessions_table(table_name).c if column.name not in present]
    if missing:
        raise SchemaConflict(
            f"table {table_name!r} lacks the columns {', '.join(missing)}: it is not "
            "sauce_sql's sessions table (or was altered by hand); give the store another "
            "table_name"
        )


def make_current(
    connection: Connection,
    table_name: str,
    *,
    lock_wait: float | None = None,
    step: Step = _no_step,
) -> None:
    """Bring ``table_name`` to the latest revision on a caller's connection, which is
    left with no transaction open (so an asyncio store can ``run_sync`` it).

    As a store's start does: the revision is read first without a transaction, and
    the migration runs only if it is behind, under the migration lock (waited for at
    most ``lock_wait`` seconds, if given). ``step`` is told as each step begins.
    """
    head, known = _revisions(str(script_location()))
    read_schema = backend_for(connection.dialect.name).read_schema
    step(f"checking the schema of table {table_name!r}")
    read_schema(connection)
    revision = _owned_revision(connection, table_name, known)
    if revision == head:
        _check_columns(connection, table_name)
    connection.rollback()
    if revision != head:
        with migration_transaction(connection, table_name, lock_wait=lock_wait, step=step):
            step(f"migrating table {table_name!r}")
            command.upgrade(make_config(table_name, connection), "head")


def downgrade(engine: Engine, table_name: str, revision: str = "base") -> None:
    """Downgrade ``table_name`` to ``revision`` (``base`` drops the table)."""
    _run(engine, table_name, command.downgrade, revision)


def check(engine: Engine, table_name: str) -> None:
    """Raise ``alembic.util.CommandError`` if the table differs from the model."""
    with engine.connect() as connection:
        command.check(make_config(table_name, connection))


def current(engine: Engine, table_name: str) -> str | None:
    """The revision ``table_name`` is at, or None if it has never been migrated."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": version_table(table_name)}
        )
        return context.get_current_revision()


def table_from_environment(x_arguments: dict[str, str]) -> str:
    """The table for the ``alembic`` command: ``-x table_name``, else SAUCE_SQL_TABLE."""
    return x_arguments.get("table_name") or os.environ.get("SAUCE_SQL_TABLE") or "sessions"
