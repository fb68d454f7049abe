"""Backends, clocks and stores for the tests.

Every store test runs on three backends: SQLite in memory, a SQLite file and the
PostgreSQL server at SAUCE_SQL_TEST_PG_URL (default: postgres@127.0.0.1:5432/test),
each test on its own table there. Without a server the PostgreSQL tests skip, saying
why, unless SAUCE_SQL_REQUIRE_PG=1 (as in CI), where a missing server fails them.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sauce_sql import Store

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


def drop_tables(url: str, *table_names: str) -> None:
    """Drop session tables and their Alembic version tables, if present."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for name in table_names:
                connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
                connection.exec_driver_sql(f'DROP TABLE IF EXISTS "alembic_version_{name}"')
    finally:
        engine.dispose()


@dataclass
class Backend:
    """Where a test's sessions live."""

    name: str
    url: str
    table_name: str

    @property
    def is_memory(self) -> bool:
        """Whether every store gets its own empty database (SQLite in memory)."""
        return self.name == "sqlite_memory"


BACKENDS = [
    pytest.param("sqlite_memory"),
    pytest.param("sqlite_file"),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]
PERSISTENT_BACKENDS = BACKENDS[1:]


def make_backend(name: str, tmp_path: Path) -> Iterator[Backend]:
    """Set a backend up for one test and tear it down after."""
    if name == "sqlite_memory":
        yield Backend(name, "sqlite://", "sessions")
    elif name == "sqlite_file":
        yield Backend(name, f"sqlite:///{tmp_path / 'sessions.db'}", "sessions")
    else:
        require_postgres()
        table = f"t_{uuid.uuid4().hex[:12]}"
        yield Backend(name, PG_URL, table)
        drop_tables(PG_URL, table)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn: SQLite in memory, a SQLite file, PostgreSQL."""
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


@pytest.fixture
def make_store(backend: Backend, clock: FakeClock) -> Iterator[StoreFactory]:
    """Make started stores on the backend (fake clock, no cleaner unless asked)."""
    stores: list[Store] = []

    def make(**options: Any) -> Store:
        options.setdefault("table_name", backend.table_name)
        options.setdefault("clock", clock)
        options.setdefault("clean_interval", None)
        store = Store(options.pop("url", backend.url), **options)
        stores.append(store)
        return store.start()

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    """A started store on the backend, with the fake clock and max age 3600 s."""
    return make_store()
