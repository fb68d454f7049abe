"""SQLite's side of everything that differs between the databases. No I/O but on a
connection or engine given.

Its ``INSERT ... ON CONFLICT``, its batch delete, how it keeps times (UTC text) and
groups them, how it masks an IP in SQL, its engine and per-connection setup (WAL, the
durability mode, the busy timeout), its migration lock and its report snapshot.
:data:`sauce_sql.backends.BACKENDS` gathers these; the rest of the package asks the
registry, never the dialect's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    URL,
    BigInteger,
    ColumnElement,
    Connection,
    Delete,
    Dialect,
    Engine,
    String,
    Table,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    literal,
    null,
    select,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.pool import StaticPool

from sauce_sql.schema import UTCDateTime

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DURABILITY_MODES",
    "MISSING_DRIVER",
    "SQLITE_FAMILY_FUNCTION",
    "SQLITE_MASK_FUNCTION",
    "browser_family",
    "bucket_keys",
    "bucket_of",
    "configure_sqlite",
    "create_store_engine",
    "datetime_from_sqlite",
    "datetime_processors",
    "datetime_to_sqlite",
    "delete_expired_batch",
    "file_path",
    "insert",
    "is_memory",
    "masked_ip",
    "migration_lock",
    "read_schema",
    "snapshot",
]

DURABILITY_MODES = {"normal": "NORMAL", "full": "FULL"}
# How long a SQLite connection waits for another process's write lock before the call
# fails with StoreUnavailable; within one process writers queue on the store's lock.
BUSY_TIMEOUT_MS = 5000
#: The SQL function the store registers on its SQLite connections to mask IPv6.
SQLITE_MASK_FUNCTION = "sauce_sql_mask_ip"
#: The SQL function the store registers on its SQLite connections to name browser families.
SQLITE_FAMILY_FUNCTION = "sauce_sql_browser_family"
MISSING_DRIVER = "Python's sqlite3 module is missing (this Python was built without it)"

_UTC = timezone.utc
_fromisoformat = datetime.fromisoformat

#: The ``INSERT`` that knows ``ON CONFLICT``.
insert = sqlite.insert


# -- URLs, engines and connections ---------------------------------------------------


def is_memory(url: URL) -> bool:
    """Whether ``url`` names SQLite's private in-memory database."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def file_path(url: URL) -> Path | None:
    """The file behind a SQLite file URL (None for memory, URI forms and servers)."""
    if url.get_backend_name() != "sqlite" or is_memory(url) or "uri" in url.query:
        return None
    return Path(url.database or "")


def configure_sqlite(dbapi_connection: Any, *, durability: str, memory: bool) -> None:
    """Set a new SQLite connection up: WAL, the durability mode, the busy timeout."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not memory:
            _use_wal(cursor)
        cursor.execute(f"PRAGMA synchronous = {DURABILITY_MODES[durability]}")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Put the file in WAL mode, waiting out other connections doing the same.

    WAL is a property of the file, so this is a no-op after the first connection. The
    switch needs an exclusive lock, and SQLite does not call the busy handler for it:
    several processes opening a new file at once (app servers starting together) get
    SQLITE_BUSY at once, so retry until the busy timeout is spent.
    """
    import sqlite3  # only ever reached with a SQLite connection open

    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.01)


def create_store_engine(url: URL, *, durability: str, timeout: float) -> Engine:
    """An engine the store owns: each connection set up by :func:`configure_sqlite`."""
    del timeout  # a SQLite connection waits for the busy timeout, not the store's
    memory = is_memory(url)
    if memory:
        # One connection shared by every thread, or each thread would see its own
        # empty database; the store serialises its use.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        # The store's writer connection is used from whichever thread holds its lock.
        engine = create_engine(url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite(dbapi_connection, durability=durability, memory=memory)

    return engine


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one snapshot of the database (for reports)."""
    with engine.connect() as connection:
        # pysqlite opens no transaction for reads by itself; one BEGIN makes the
        # statements that follow read one snapshot. Closing the connection ends it.
        connection.exec_driver_sql("BEGIN")
        yield connection


def read_schema(connection: Connection) -> None:
    """Ready ``connection`` to read the schema without a transaction: pysqlite opens
    none for reads by itself, so nothing to do."""


@contextmanager
def migration_lock(
    connection: Connection,
    table_name: str,
    lock_wait: float | None,
    step: Callable[[str], None],
) -> Iterator[None]:
    """One transaction holding the database's write lock, for a migration.

    pysqlite would not open a transaction for DDL by itself: take the write lock up
    front so a second process waits (for the busy timeout) instead of racing to
    CREATE TABLE.
    """
    del table_name, lock_wait, step  # one lock for the whole file, waited for as any write
    dbapi: Any = connection.connection.dbapi_connection
    saved, dbapi.isolation_level = dbapi.isolation_level, None
    try:
        with connection.begin():
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield
    finally:
        dbapi.isolation_level = saved


# -- times: UTC text -----------------------------------------------------------------


def datetime_to_sqlite(value: datetime) -> str:
    """An aware datetime as SQLite keeps it: UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    if value.tzinfo is not _UTC:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} given where an aware one is required")
        value = value.astimezone(_UTC)
    # SQLAlchemy's own format; %-formatting beats isoformat() and strftime() here.
    return "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def datetime_from_sqlite(dialect: Dialect) -> Callable[[str | None], datetime | None]:
    """Parse SQLite's datetime text into an aware UTC datetime.

    Text the store did not write (another program's rows) falls back to SQLAlchemy's
    own parser, so anything it reads is read the same.
    """
    slow = UTCDateTime().dialect_impl(dialect).result_processor(dialect, None)
    assert slow is not None

    def parse_other(value: str | None) -> datetime | None:
        if value is None:
            return None
        try:
            parsed = _fromisoformat(value)
        except (TypeError, ValueError):
            return slow(value)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=_UTC)
        return parsed.astimezone(_UTC)

    def parse(value: str | None) -> datetime | None:
        try:
            # Appending the offset is cheaper than replace(tzinfo=...) afterwards,
            # and fromisoformat gives back the timezone.utc singleton for it.
            return _fromisoformat(value + "+00:00")  # type: ignore[operator]
        except (TypeError, ValueError):
            return parse_other(value)

    return parse


def datetime_processors(
    dialect: Dialect,
) -> tuple[Callable[[datetime], str], Callable[[str | None], datetime | None]]:
    """How a UTCDateTime is bound and read on SQLite: SQLAlchemy formats and parses its
    text with %-formatting and a regular expression, several microseconds per value;
    these do the same to the byte with ``isoformat`` and ``fromisoformat``."""
    return datetime_to_sqlite, datetime_from_sqlite(dialect)


def bucket_of(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The start of the 15-minute UTC bucket holding a stored time, as stored times are."""
    # Stored as UTC text 'YYYY-MM-DD HH:MM:SS.ffffff': keep the hour, round the minutes.
    minute = cast(func.substr(column, 15, 2), BigInteger())
    return func.printf(
        literal("%s%02d:00.000000", String()),
        func.substr(column, 1, 14),
        minute - minute.op("%")(15),
        type_=String(),
    )


def bucket_keys(column: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """What a report groups a 15-minute bucket of ``column`` by: the hour's text and
    the quarter (cheaper to group by than one formatted string)."""
    minute = cast(func.substr(column, 15, 2), BigInteger())
    return [func.substr(column, 1, 13), minute // 15]


# -- statements ------------------------------------------------------------------------


def delete_expired_batch(
    table: Table, expired: ColumnElement[bool], batch: ColumnElement[Any]
) -> Delete:
    """Delete at most ``batch`` rows that are ``expired``, picked by key."""
    victims = select(table.c.session_id).where(expired).limit(batch).scalar_subquery()
    return delete(table).where(table.c.session_id.in_(victims), expired)


def masked_ip(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A client IP masked to its /24 (IPv4) or /48 (IPv6), in SQL."""
    return case(
        (column.is_(None), null()),
        # Canonical IPv4: dropping the last number keeps the /24.
        (func.instr(column, ":") == 0, func.rtrim(column, "0123456789").concat("0")),
        else_=getattr(func, SQLITE_MASK_FUNCTION)(column),
    )


def browser_family(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The browser family of a stored user agent: the store's own
    :func:`sauce_sql.browsers.browser_family`, registered on each connection."""
    named: ColumnElement[Any] = getattr(func, SQLITE_FAMILY_FUNCTION)(column, type_=String())
    return named
