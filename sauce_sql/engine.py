"""Every driver quirk in one place: URLs, engines and how each connection is set up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from sauce_sql.errors import InvalidInput
from sauce_sql.redact import safe_url, scrub, shown
from sauce_sql.statements import SUPPORTED_DIALECTS

__all__ = [
    "BUSY_TIMEOUT_MS",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_URL",
    "DURABILITY_MODES",
    "check_application_engine",
    "configure_sqlite",
    "create_store_engine",
    "is_memory",
    "parse_url",
    "prepare_threshold",
    "snapshot",
]

DEFAULT_URL = "sqlite:///sauce_sql.db"
DURABILITY_MODES = {"normal": "NORMAL", "full": "FULL"}
# How long a SQLite connection waits for another process's write lock before the call
# fails with StoreUnavailable; within one process writers queue on the store's lock.
BUSY_TIMEOUT_MS = 5000
# An unreachable PostgreSQL server must fail a call within seconds, never hang it
# (within the store's timeout, if shorter, but libpq waits at least 2 s).
CONNECT_TIMEOUT_S = 5
# How much of a refused URL a message quotes.
URL_SHOWN = 100


# The drivers the store runs on, by dialect ("": the URL names none).
_DRIVERS = {"sqlite": ("", "pysqlite"), "postgresql": ("", "psycopg")}
_INSTALL_PSYCOPG = "pip install 'sauce-sql[postgres]'"
_RUNS_ON = (
    "sauce_sql runs on sqlite:// (Python's own sqlite3) and on postgresql:// or "
    f"postgresql+psycopg:// (psycopg 3: {_INSTALL_PSYCOPG})"
)


def parse_url(url: str | URL | None, *, asyncio: bool = False) -> URL:
    """The URL to use, ``postgresql://`` meaning psycopg 3; refuses what we cannot serve
    (``asyncio``: the asyncio store's, which also runs ``postgresql+asyncpg://``)."""
    if url is None:
        url = DEFAULT_URL
    if not isinstance(url, (str, URL)):
        raise TypeError(f"url must be a str or sqlalchemy.URL, not {type(url).__name__}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Neither error's text is shown: a port's ValueError quotes what follows the
        # host, which may be the rest of a password holding an "@".
        raise InvalidInput(
            f"cannot parse database URL {shown(scrub(str(url)), URL_SHOWN)}: "
            "expected dialect[+driver]://user:password@host:port/database"
        ) from None
    if parsed.host is not None and "@" in parsed.host:
        # The driver would quote the "host" (the password's end) in its errors.
        raise InvalidInput(
            f"cannot use database URL {shown(safe_url(parsed), URL_SHOWN)}: its password "
            "holds an '@'; write it percent-encoded, as %40"
        )
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in SUPPORTED_DIALECTS:
        raise InvalidInput(f"unsupported database {shown(backend)} in URL; {_RUNS_ON}")
    if asyncio and backend == "postgresql" and driver == "asyncpg":
        return parsed
    if driver == "asyncpg":
        raise InvalidInput(
            "unsupported driver 'asyncpg' for Store: asyncpg is an asyncio driver, which "
            f"AsyncStore runs (postgresql+asyncpg://); {_RUNS_ON}"
        )
    if driver not in _DRIVERS[backend]:
        raise InvalidInput(
            f"unsupported driver {shown(driver)} for {backend} in URL "
            f"{shown(safe_url(parsed), URL_SHOWN)}; {_RUNS_ON}"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


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
    text = given if isinstance(given, str) else given[-1]
    if text.strip().lower() in ("", "none"):
        return None
    try:
        threshold = int(text)
    except ValueError:
        threshold = -1
    if threshold < 0:
        raise InvalidInput(
            "prepare_threshold in the database URL must be a whole number >= 0 or 'none', "
            f"got {text[:40]!r}"
        )
    return threshold


def check_application_engine(engine: Engine) -> None:
    """Refuse an application's engine the store cannot share between its threads."""
    parse_url(engine.url)  # a dialect the store serves
    if is_memory(engine.url) and not isinstance(engine.pool, StaticPool):
        raise InvalidInput(
            "an in-memory SQLite engine gives each thread its own empty database; create "
            "it with poolclass=StaticPool and connect_args={'check_same_thread': False}"
        )


def is_memory(url: URL) -> bool:
    """Whether ``url`` names SQLite's private in-memory database."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


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


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one snapshot of the database (for reports)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            yield connection.execution_options(isolation_level="REPEATABLE READ")
        return
    with engine.connect() as connection:
        # pysqlite opens no transaction for reads by itself; one BEGIN makes the
        # statements that follow read one snapshot. Closing the connection ends it.
        connection.exec_driver_sql("BEGIN")
        yield connection


def create_store_engine(url: URL, *, durability: str, timeout: float = 10.0) -> Engine:
    """An engine the store owns, with each backend's needs applied."""
    try:
        if url.get_backend_name() == "sqlite":
            return _sqlite_engine(url, durability)
        return _postgresql_engine(url, timeout)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise InvalidInput(
            f"cannot use database URL {shown(safe_url(url), URL_SHOWN)}: {scrub(str(exc))}"
        ) from None
    except ImportError as exc:
        # parse_url let through only the drivers named in _DRIVERS.
        if url.get_backend_name() == "sqlite":
            missing = "Python's sqlite3 module is missing (this Python was built without it)"
        else:
            missing = (
                f"psycopg 3, the driver for postgresql://, is not installed: {_INSTALL_PSYCOPG}"
            )
        raise InvalidInput(f"{missing} ({exc})") from None


def _postgresql_engine(url: URL, timeout: float) -> Engine:
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


def _sqlite_engine(url: URL, durability: str) -> Engine:
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
