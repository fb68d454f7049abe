"""The supported databases, each named; any other dialect is refused by name.

Each backend brings what differs on its database: its SQL rules (the upsert, the
batch delete, how times are kept and bucketed, how an IP is masked), its engine and
per-connection setup, its migration lock, its report snapshot and its cleanup batch
strategy (each in its ``dialect`` module), and its executors (:mod:`.sync`,
:mod:`.aio`). The rest of the package asks :func:`backend_for` rather than testing
dialect names itself, once, when it builds what it runs.

This module imports no executor, so the statement and schema modules can use it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Delete, Dialect, Engine, Table
from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
from sqlalchemy.dialects.sqlite import Insert as SQLiteInsert

from sauce_sql.backends.postgresql import dialect as postgresql
from sauce_sql.backends.sqlite import dialect as sqlite
from sauce_sql.errors import InvalidInput

__all__ = ["BACKENDS", "Backend", "UpsertInsert", "backend_for"]

#: An ``INSERT`` that knows ``ON CONFLICT`` (each dialect has its own).
UpsertInsert = PostgresqlInsert | SQLiteInsert
_Expression = Callable[[ColumnElement[Any]], ColumnElement[Any]]


@dataclass(frozen=True)
class Backend:
    """What sauce_sql knows of one database."""

    name: str
    #: How long one cleanup batch should take. On SQLite a batch holds the database's
    #: one write lock, so every writer waits behind it: a few milliseconds. On
    #: PostgreSQL writers of live rows do not wait for it, but each batch is a commit
    #: (a WAL flush) of its own, so batches may be larger.
    batch_seconds: float
    #: A server database: its clock is the one clock of every app server, and an
    #: advisory lock lets one app server's cleaner run a round while others skip it.
    server: bool
    #: Whether a cleanup finds its batch's end first (SQLite: one range of the index
    #: then) rather than deleting ``LIMIT``-ed batches.
    bounded_batches: bool
    #: How long a cleanup leaves the write lock free after each batch, as a share of
    #: the batch's time. SQLite's busy handler has a writer of another process sleep
    #: and try again (every 100 ms once it has waited a while), so batches that follow
    #: one another closely keep it out for a whole round; free half the time, it gets
    #: in within a try or two. PostgreSQL's writers do not wait for a batch.
    batch_pause: float
    #: The drivers a URL may name for the synchronous store ("": none named).
    drivers: tuple[str, ...]
    #: Drivers only the asyncio store runs.
    async_drivers: tuple[str, ...]
    #: The driver a URL naming none gets, written into the URL ("": left unnamed).
    default_driver: str
    #: What to tell a user whose driver cannot be imported.
    missing_driver: str
    #: ``(url, *, durability, timeout)``: an engine the store owns, each connection
    #: set up for the store.
    create_engine: Callable[..., Engine]
    #: A connection whose reads all see one snapshot (for reports).
    snapshot: Callable[[Engine], AbstractContextManager[Connection]]
    #: Readies a connection to read the schema without opening a transaction.
    read_schema: Callable[[Connection], None]
    #: ``(connection, table_name, lock_wait, step)``: one transaction holding the
    #: lock that keeps concurrent migrations of a table apart.
    migration_lock: Callable[
        [Connection, str, float | None, Callable[[str], None]], AbstractContextManager[None]
    ]
    #: The ``INSERT`` construct that knows ``ON CONFLICT`` (the dialect's own).
    insert: Callable[[Table], UpsertInsert]
    #: ``(table, expired, batch)``: delete at most ``batch`` of the ``expired`` rows.
    delete_expired_batch: Callable[[Table, ColumnElement[bool], ColumnElement[Any]], Delete]
    #: ``(stored, now, expires)``: the expiry a lean increment writes, keeping a stored
    #: one close enough (HOT updates); None where expiry is always exact.
    lean_expiry: (
        Callable[[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]], ColumnElement[Any]]
        | None
    )
    #: Whether stored times are text (raw bounds read back are bound as text).
    times_as_text: bool
    #: The store's own (bind, result) converters of UTCDateTime values on a dialect,
    #: or None where the driver takes and gives aware datetimes.
    datetimes: Callable[[Dialect], tuple[Callable[[datetime], Any], Callable[[Any], Any]]] | None
    #: The start of the 15-minute UTC bucket of a stored time, as stored times are.
    bucket_of: _Expression
    #: What a report groups 15-minute buckets of a stored time by.
    bucket_keys: Callable[[ColumnElement[Any]], list[ColumnElement[Any]]]
    #: A client IP masked to its /24 or /48, in SQL.
    masked_ip: _Expression
    #: The browser family of a stored user agent, in SQL.
    browser_family: _Expression
    #: Data-modifying statements in ``WITH`` (``DELETE ... RETURNING`` feeding an
    #: ``INSERT``): history then moves rows in one statement each, rather than
    #: copying and deleting in a transaction.
    writable_ctes: bool
    #: Whether history may be a partitioned table (sauce_sql.partitions).
    partitions: bool


BACKENDS = {
    "sqlite": Backend(
        "sqlite",
        batch_seconds=0.008,
        server=False,
        bounded_batches=True,
        batch_pause=1.0,
        drivers=("", "pysqlite"),
        async_drivers=(),
        default_driver="",
        missing_driver=sqlite.MISSING_DRIVER,
        create_engine=sqlite.create_store_engine,
        snapshot=sqlite.snapshot,
        read_schema=sqlite.read_schema,
        migration_lock=sqlite.migration_lock,
        insert=sqlite.insert,
        delete_expired_batch=sqlite.delete_expired_batch,
        lean_expiry=None,
        times_as_text=True,
        datetimes=sqlite.datetime_processors,
        bucket_of=sqlite.bucket_of,
        bucket_keys=sqlite.bucket_keys,
        masked_ip=sqlite.masked_ip,
        browser_family=sqlite.browser_family,
        writable_ctes=False,
        partitions=False,
    ),
    "postgresql": Backend(
        "postgresql",
        batch_seconds=0.02,
        server=True,
        bounded_batches=False,
        batch_pause=0.0,
        drivers=("", "psycopg"),
        async_drivers=("asyncpg",),
        default_driver="psycopg",
        missing_driver=postgresql.MISSING_DRIVER,
        create_engine=postgresql.create_store_engine,
        snapshot=postgresql.snapshot,
        read_schema=postgresql.read_schema,
        migration_lock=postgresql.migration_lock,
        insert=postgresql.insert,
        delete_expired_batch=postgresql.delete_expired_batch,
        lean_expiry=postgresql.lean_expiry,
        times_as_text=False,
        datetimes=None,
        bucket_of=postgresql.bucket_of,
        bucket_keys=postgresql.bucket_keys,
        masked_ip=postgresql.masked_ip,
        browser_family=postgresql.browser_family,
        writable_ctes=True,
        partitions=True,
    ),
}


def backend_for(dialect_name: str) -> Backend:
    """The backend of ``dialect_name``; InvalidInput for a database sauce_sql does not
    run on."""
    try:
        return BACKENDS[dialect_name]
    except KeyError:
        raise InvalidInput(
            f"sauce_sql runs on {' and '.join(sorted(BACKENDS))}, not {dialect_name!r}"
        ) from None
