"""PostgreSQL's side of everything that differs between the databases. No I/O but on a
connection or engine given.

Its ``INSERT ... ON CONFLICT``, its batch delete (by physical row address), the
lean expiry of HOT updates, how it buckets times and masks an IP in SQL, its engine
(psycopg 3, autocommit, a bounded connect), its migration lock (an advisory lock) and
its report snapshot. :data:`sauce_sql.backends.BACKENDS` gathers these; the rest of
the package asks the registry, never the dialect's name.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    URL,
    ColumnElement,
    Connection,
    Delete,
    Engine,
    Integer,
    Interval,
    String,
    Table,
    any_,
    case,
    cast,
    create_engine,
    delete,
    func,
    literal,
    literal_column,
    null,
    select,
    text,
)
from sqlalchemy.dialects import postgresql

from sauce_sql.browsers import FAMILY_RULES, NO_AGENT, OTHER
from sauce_sql.errors import InvalidInput, StoreUnavailable

__all__ = [
    "CONNECT_TIMEOUT_S",
    "INSTALL_PSYCOPG",
    "MISSING_DRIVER",
    "RESOLUTION_CAP",
    "RESOLUTION_SHARE",
    "browser_family",
    "bucket_keys",
    "bucket_of",
    "create_store_engine",
    "delete_expired_batch",
    "expiry_resolution",
    "insert",
    "lean_expiry",
    "masked_ip",
    "migration_lock",
    "prepare_threshold",
    "read_schema",
    "snapshot",
]

#: On PostgreSQL, expires_at may lag ``now + session_max_age`` by up to
#: ``min(session_max_age / RESOLUTION_SHARE, RESOLUTION_CAP)`` after an increment or
#: assign_user (see :func:`expiry_resolution`).
RESOLUTION_SHARE = 20
RESOLUTION_CAP = timedelta(minutes=5)
# An unreachable PostgreSQL server must fail a call within seconds, never hang it
# (within the store's timeout, if shorter, but libpq waits at least 2 s).
CONNECT_TIMEOUT_S = 5
INSTALL_PSYCOPG = "pip install 'sauce-sql[postgres]'"
MISSING_DRIVER = f"psycopg 3, the driver for postgresql://, is not installed: {INSTALL_PSYCOPG}"

#: The ``INSERT`` that knows ``ON CONFLICT``.
insert = postgresql.insert


# -- URLs, engines and connections ---------------------------------------------------


def prepare_threshold(url: URL) -> int | None:
    """After how many runs psycopg prepares a statement on the server; None: never.

    Never, unless the URL says ``?prepare_threshold=N``: psycopg names prepared
    statements per client connection, and a pooler that hands server connections
    between clients (PgBouncer in transaction or statement mode, before 1.21) lets
    such a name reach another connection, where it means another statement.
    """
    given = url.query.get("prepare_threshold")
    if given is None:
        return None
    value = given if isinstance(given, str) else given[-1]
    if value.strip().lower() in ("", "none"):
        return None
    try:
        threshold = int(value)
    except ValueError:
        threshold = -1
    if threshold < 0:
        raise InvalidInput(
            "prepare_threshold in the database URL must be a whole number >= 0 or 'none', "
            f"got {value[:40]!r}"
        )
    return threshold


def create_store_engine(url: URL, *, durability: str, timeout: float) -> Engine:
    """An engine the store owns: autocommit, a connect bounded by ``timeout``."""
    del durability  # the server's own setting
    connect_args: dict[str, Any] = {"prepare_threshold": prepare_threshold(url)}
    if "connect_timeout" not in url.query:
        # Whole seconds: libpq's own unit.
        connect_args["connect_timeout"] = max(2, min(CONNECT_TIMEOUT_S, int(timeout)))
    # Autocommit from the first statement on: behind a pooler in statement mode a
    # transaction is refused, and SQLAlchemy's first look at a new server (the
    # version, the hstore type) would otherwise open one. Migrations ask for their
    # transaction themselves (migrate.migration_transaction).
    return create_engine(
        url, connect_args=connect_args, isolation_level="AUTOCOMMIT", use_native_hstore=False
    )


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one snapshot of the database (for reports)."""
    with engine.connect() as connection:
        yield connection.execution_options(isolation_level="REPEATABLE READ")


def read_schema(connection: Connection) -> None:
    """Ready ``connection`` to read the schema without a transaction (which a pooler in
    statement mode would refuse)."""
    connection.execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def migration_lock(
    connection: Connection,
    table_name: str,
    lock_wait: float | None,
    step: Callable[[str], None],
) -> Iterator[None]:
    """One transaction holding the table's advisory lock, for a migration.

    The lock is waited for without bound, or with ``lock_wait`` for at most that many
    seconds (then StoreUnavailable says another session holds it).
    """
    # The store's own engine runs in autocommit (create_store_engine): a migration is
    # one transaction, so that its lock and its DDL go together.
    connection.execution_options(isolation_level="READ COMMITTED")
    with connection.begin():
        key = zlib.crc32(f"sauce_sql:{table_name}".encode())
        if lock_wait is None:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        else:
            _take_lock(connection, table_name, key, lock_wait, step)
        yield


def _take_lock(
    connection: Connection, table_name: str, key: int, wait: float, step: Callable[[str], None]
) -> None:
    """Take the migration lock, trying for ``wait`` seconds. Tried rather than waited
    for: each try answers at once, so a session holding the lock is told apart from a
    server that does not answer."""
    deadline = time.monotonic() + wait
    pause = 0.01
    while True:
        step(f"waiting for the migration lock of table {table_name!r}")
        try_lock = text("SELECT pg_try_advisory_xact_lock(:key)")
        if connection.execute(try_lock, {"key": key}).scalar():
            return
        left = deadline - time.monotonic()
        if left <= 0:
            raise StoreUnavailable(
                f"another session has held the migration lock of table {table_name!r} for "
                f"more than the store's timeout of {wait:g} s (a migration running in "
                "another process, or stuck); start the store again once it ends, or migrate "
                "ahead with `sauce-sql migrate`"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


# -- statements ------------------------------------------------------------------------


def expiry_resolution(session_max_age: timedelta) -> timedelta:
    """How far short of ``now + session_max_age`` a PostgreSQL increment or
    ``assign_user`` may leave ``expires_at``: 5% of the max age, at most 5 minutes.

    >>> expiry_resolution(timedelta(hours=1))
    datetime.timedelta(seconds=180)
    """
    return min(session_max_age / RESOLUTION_SHARE, RESOLUTION_CAP)


def lean_expiry(
    stored: ColumnElement[Any], now: ColumnElement[Any], expires: ColumnElement[Any]
) -> ColumnElement[Any]:
    """The ``expires_at`` a lean increment or assign_user writes: the ``stored`` value
    while it lies within the resolution below ``expires`` (and not past it), so the
    row's indexed columns are unchanged and the update can be HOT.

    The resolution is computed from the statement's own ``now`` and ``expires`` (their
    difference is the store's max age), so the statement takes the same parameters as
    the exact one and a store of another max age on the same table gets its own.
    """
    max_age = (expires - now).self_group()
    share = max_age.op("/")(literal_column(str(RESOLUTION_SHARE), Integer()))
    cap = literal_column(f"interval '{RESOLUTION_CAP.total_seconds():.0f} seconds'", Interval())
    resolution = func.least(share, cap, type_=Interval())
    fresh_enough = (stored >= expires - resolution) & (stored <= expires)
    return case((fresh_enough, stored), else_=expires)


def delete_expired_batch(
    table: Table, expired: ColumnElement[bool], batch: ColumnElement[Any]
) -> Delete:
    """Delete at most ``batch`` rows that are ``expired``, by physical row address:
    PostgreSQL plans ``session_id IN (SELECT ... LIMIT)`` as a scan of the whole table
    per batch."""
    ctid: ColumnElement[Any] = literal_column("ctid")
    victims = select(ctid).where(expired).limit(batch).scalar_subquery()
    return delete(table).where(ctid == any_(func.array(victims)), expired)


def bucket_of(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The start of the 15-minute UTC bucket holding a stored time, as stored times are."""
    origin: ColumnElement[Any] = literal_column("TIMESTAMPTZ '2000-01-01 00:00:00+00'")
    return func.date_bin(literal_column("INTERVAL '15 minutes'"), column, origin)


def bucket_keys(column: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    """What a report groups a 15-minute bucket of ``column`` by: the bucket's start."""
    return [bucket_of(column)]


def masked_ip(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A client IP masked to its /24 (IPv4) or /48 (IPv6), in SQL."""
    # Stored addresses are canonical; a zone id ("fe80::1%eth0") is no inet.
    address = cast(func.split_part(column, "%", 1), postgresql.INET())
    return case(
        (column.is_(None), null()),
        (
            func.family(address) == 4,
            func.host(func.network(func.set_masklen(address, 24))),
        ),
        else_=func.host(func.network(func.set_masklen(address, 48))),
    )


def browser_family(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The browser family of a stored user agent, as :func:`sauce_sql.browsers.browser_family`
    names it: the same patterns as regular expressions (whose word boundary is ``\\y``,
    not ``\\b``)."""
    whens: list[tuple[ColumnElement[bool], Any]] = [(column == "", NO_AGENT)]
    for family, pattern in FAMILY_RULES:
        regex = literal(pattern.replace(r"\b", r"\y"), String())
        whens.append((column.op("~*")(regex), family))
    return case(*whens, else_=OTHER)
