"""Backends, clocks and stores for the tests.

Every store test runs on SQLite in memory, a SQLite file and the PostgreSQL server at
SAUCE_SQL_TEST_PG_URL (default: postgres@127.0.0.1:5432/test), each test on its own
table there, and on that server through a real PgBouncer in transaction and in
statement pooling mode (tests/_pgbouncer.py starts them). Without a server, or without
PgBouncer installed, those tests skip, saying why, unless SAUCE_SQL_REQUIRE_PG=1 (as
in CI), where a missing server or PgBouncer fails them.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from _facade import LoopThread, SyncAsyncStore
from _pgbouncer import pgbouncer_url

from sauce_sql import AsyncStore, Store

PG_URL = os.environ.get(
    "SAUCE_SQL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REQUIRE_PG = os.environ.get("SAUCE_SQL_REQUIRE_PG") == "1"
START = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


@functools.cache
def postgres_unavailable() -> str | None:
    """Why the PostgreSQL server cannot be used, or None if it can."""
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    except Exception as exc:  # the driver may be missing
        return f"cannot use {PG_URL}: {exc}"
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return f"no PostgreSQL server answers at {PG_URL}: {' '.join(str(exc).split())[:200]}"
    finally:
        engine.dispose()
    return None


def require_postgres() -> None:
    """Skip (or, with SAUCE_SQL_REQUIRE_PG=1, fail) when PostgreSQL is unavailable."""
    reason = postgres_unavailable()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(f"SAUCE_SQL_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)


def require_pgbouncer(mode: str) -> str:
    """The URL of a PgBouncer in ``mode`` before the test server; skips (or fails in CI)
    when the server or PgBouncer is not there."""
    require_postgres()
    try:
        return pgbouncer_url(PG_URL, mode)
    except RuntimeError as exc:
        if REQUIRE_PG:
            pytest.fail(f"SAUCE_SQL_REQUIRE_PG=1 but {exc}")
        pytest.skip(str(exc))


def migrate_directly(table_name: str) -> None:
    """Create ``table_name`` on the server itself: a pooler in statement mode refuses
    the transaction a migration is."""
    with Store(PG_URL, table_name=table_name, clean_interval=None):
        pass


def drop_tables(url: str, *table_names: str) -> None:
    """Drop session tables (with their history and aggregates) and their Alembic
    version tables, if present."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for name in table_names:
                # History first: on PostgreSQL its partitions go with it.
                for suffix in ("_history", "_aggregates", "_agg_browsers", "_agg_values", ""):
                    connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}{suffix}"')
                connection.exec_driver_sql(f'DROP TABLE IF EXISTS "alembic_version_{name}"')
    finally:
        engine.dispose()


@dataclass
class Backend:
    """Where a test's sessions live."""

    name: str
    url: str
    table_name: str
    #: The database itself, for what a pooler cannot pass (migrations in statement mode).
    direct_url: str = ""

    def __post_init__(self) -> None:
        self.direct_url = self.direct_url or self.url

    @property
    def statement_pooling(self) -> bool:
        """Whether a pooler in statement mode stands between the store and the server,
        refusing every transaction."""
        return self.name == "pgbouncer_statement"

    @property
    def app_engine_options(self) -> dict[str, Any]:
        """What an application's own Engine needs to work on this backend: behind
        statement pooling, autocommit from its first statement on (README)."""
        if self.statement_pooling:
            return {"isolation_level": "AUTOCOMMIT", "use_native_hstore": False}
        return {}

    def migrate(self, table_name: str) -> None:
        """Prepare another table of the test's: behind statement pooling, migrate it on
        the server itself (a migration is a transaction); elsewhere a store's start does."""
        if self.statement_pooling:
            migrate_directly(table_name)

    @property
    def dialect(self) -> str:
        """The database behind the backend: ``sqlite`` or ``postgresql``."""
        return "sqlite" if self.name.startswith("sqlite") else "postgresql"

    @property
    def is_memory(self) -> bool:
        """Whether every store gets its own empty database (SQLite in memory)."""
        return self.name == "sqlite_memory"


BACKENDS = [
    pytest.param("sqlite_memory"),
    pytest.param("sqlite_file"),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("pgbouncer_transaction", marks=pytest.mark.postgresql),
    pytest.param("pgbouncer_statement", marks=pytest.mark.postgresql),
]
#: Backends several stores and processes share, and whose data outlives a store.
SHARED_BACKENDS = BACKENDS[1:]
#: The same, reached directly: for what a pooler in statement mode cannot run
#: (migrations) or does not pass through (the server's own view of its sessions).
PERSISTENT_BACKENDS = BACKENDS[1:3]


def make_backend(name: str, tmp_path: Path) -> Iterator[Backend]:
    """Set a backend up for one test and tear it down after."""
    if name == "sqlite_memory":
        yield Backend(name, "sqlite://", "sessions")
    elif name == "sqlite_file":
        yield Backend(name, f"sqlite:///{tmp_path / 'sessions.db'}", "sessions")
    elif name == "postgresql":
        require_postgres()
        table = f"t_{uuid.uuid4().hex[:12]}"
        yield Backend(name, PG_URL, table)
        drop_tables(PG_URL, table)
    elif name.startswith("pgbouncer_"):
        url = require_pgbouncer(name.removeprefix("pgbouncer_"))
        table = f"t_{uuid.uuid4().hex[:12]}"
        migrate_directly(table)
        yield Backend(name, url, table, direct_url=PG_URL)
        drop_tables(PG_URL, table)
    else:
        raise ValueError(f"no backend {name!r}")


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn: SQLite in memory, a SQLite file, PostgreSQL (directly and
    through PgBouncer); see pytest_generate_tests."""
    yield from make_backend(request.param, tmp_path)


@pytest.fixture(params=SHARED_BACKENDS)
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A SQLite file, PostgreSQL, and PostgreSQL through PgBouncer in transaction and
    in statement mode."""
    yield from make_backend(request.param, tmp_path)


@pytest.fixture(params=PERSISTENT_BACKENDS)
def persistent_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The backends whose data outlives a store: a SQLite file, PostgreSQL."""
    yield from make_backend(request.param, tmp_path)


@pytest.fixture
def postgres_url() -> str:
    """The test server's URL; skips (or fails in CI) when it is not there."""
    require_postgres()
    return PG_URL


class FakeClock:
    """An aware UTC clock that moves only when a test says so."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    """A clock fixed at 2026-01-01 12:00 UTC until advanced."""
    return FakeClock()


StoreFactory = Callable[..., Store]


#: The stores: Store itself, and AsyncStore driven through a synchronous face
#: (tests/_facade.py), so that one behaviour suite checks both; on PostgreSQL also
#: AsyncStore on asyncpg (postgresql+asyncpg://).
STORE_KINDS = ["sync", "async", "asyncpg"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Store tests run on every backend and both stores (asyncpg on PostgreSQL itself),
    but those marked ``sync_only`` on Store alone."""
    names = metafunc.fixturenames
    only_sync = metafunc.definition.get_closest_marker("sync_only") is not None
    kinds = ["sync"] if only_sync else STORE_KINDS
    # A test module may define its own backend fixture, with its own params.
    definitions = metafunc._arg2fixturedefs.get("backend") or ()
    if definitions and definitions[-1].params is not None:
        names = [name for name in names if name != "backend"]
    if "backend" in names and "store_kind" in names:
        pairs = [
            pytest.param(backend.values[0], kind, marks=backend.marks)
            for backend in BACKENDS
            for kind in kinds
            if kind != "asyncpg" or backend.values[0] == "postgresql"
        ]
        metafunc.parametrize(("backend", "store_kind"), pairs, indirect=["backend"])
    elif "backend" in names:
        metafunc.parametrize("backend", BACKENDS, indirect=True)
    elif "store_kind" in names:
        metafunc.parametrize("store_kind", [kind for kind in kinds if kind != "asyncpg"])


@pytest.fixture
def make_store(backend: Backend, clock: FakeClock, store_kind: str) -> Iterator[StoreFactory]:
    """Make started stores on the backend (fake clock, no cleaner unless asked), of
    each kind."""
    stores: list[Store] = []
    loop = None if store_kind == "sync" else LoopThread()

    def make(**options: Any) -> Store:
        options.setdefault("table_name", backend.table_name)
        options.setdefault("clock", clock)
        options.setdefault("clean_interval", None)
        backend.migrate(options["table_name"])
        url = options.pop("url", backend.url)
        if store_kind == "asyncpg":
            url = sa.make_url(url).set(drivername="postgresql+asyncpg")
        if loop is None:
            store = Store(url, **options)
        else:
            # The face offers Store's methods; to the tests it is one.
            store = cast(Store, SyncAsyncStore(AsyncStore(url, **options), loop))
        stores.append(store)
        return store.start()

    yield make
    for store in stores:
        store.close()
    if loop is not None:
        loop.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    """A started store on the backend, with the fake clock and max age 3600 s."""
    return make_store()
