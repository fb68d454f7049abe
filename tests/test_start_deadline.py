"""start() on a PostgreSQL server that stops answering: every step ends in time.

A server that accepts the connection and then goes silent, one frozen (SIGSTOP) after
the application's engine connected to it, and a migration lock that another session
keeps: each step of ``start()`` (connect, schema check, migration and its lock) ends
in StoreUnavailable naming what it waited for, within the store's timeout, on Store
and on AsyncStore. The silent server is a TCP proxy of the test's (tests/_tcpproxy.py)
that stops forwarding, so the server other tests share keeps running.

Each start() runs in a thread of the test's and is waited for at most WAIT seconds,
so that a start() that hangs (the defect) fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _support import admin, frozen, tagged_url
from _tcpproxy import TcpProxy
from conftest import Backend, make_backend

from sauce_sql import AsyncStore, Store, StoreUnavailable

pytestmark = pytest.mark.postgresql

WAIT = 20.0  # seconds; only reached when start() hangs (the defect)
TIMEOUT = 1.0  # the stores' timeout

# What ends forwarding, for each step of start(); see TcpProxy.silence_when.
SILENCES: dict[str, dict[str, bytes]] = {
    # The server's ReadyForQuery at the end of the handshake: silent once connected,
    # while SQLAlchemy asks the new server its version.
    "connecting": {"server_sends": b"Z\x00\x00\x00\x05"},
    # The schema check's first look for the table.
    "checking the schema": {"client_sends": b"pg_catalog.pg_class"},
    # The migration's first DDL statement.
    "migrating": {"client_sends": b"CREATE TABLE"},
}


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL itself, with a fresh table name (its tables dropped after)."""
    yield from make_backend("postgresql", tmp_path)


def start_in_time(kind: str, make: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Start the store ``make()`` builds (Store or AsyncStore, by ``kind``) in a thread
    of its own, and close it after; the error start() raised (or None) and how long it
    took. Fails if start() has not returned after WAIT seconds."""
    outcome: list[tuple[BaseException | None, float]] = []

    def run() -> None:
        store = make()
        began = time.monotonic()
        error: BaseException | None = None
        try:
            if kind == "sync":
                store.start()
            else:
                asyncio.run(store.start())
        except BaseException as exc:
            error = exc
        outcome.append((error, time.monotonic() - began))
        if kind == "sync":
            store.close()
        else:
            asyncio.run(store.close())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert outcome, f"start() did not return in {WAIT} s"
    thread.join(WAIT)
    return outcome[0]


def store_class(kind: str) -> Any:
    """Store or AsyncStore."""
    return Store if kind == "sync" else AsyncStore


def assert_timed_out(error: BaseException | None, took: float, step: str) -> None:
    """start() failed with StoreUnavailable naming the step and the timeout, in time."""
    assert isinstance(error, StoreUnavailable), repr(error)
    message = str(error)
    assert step in message, message
    assert f"timeout of {TIMEOUT:g} s" in message, message
    assert error.__cause__ is not None
    assert took < 3 * TIMEOUT, took


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("step", list(SILENCES))
def test_start_on_a_server_gone_silent_fails_within_the_timeout(
    pg: Backend, kind: str, step: str
) -> None:
    """A server that goes silent at each step of start() (a fresh table, so start()
    migrates): StoreUnavailable naming the step within the store's timeout; a store
    started once the server answers again works."""
    target = sa.make_url(pg.url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    try:
        proxy.silence_when(**SILENCES[step])
        proxied = target.set(host="127.0.0.1", port=proxy.port)
        url = proxied.update_query_dict({"sslmode": "disable"}).render_as_string(False)
        options: dict[str, Any] = {"table_name": pg.table_name, "timeout": TIMEOUT}
        cls = store_class(kind)
        error, took = start_in_time(kind, lambda: cls(url, clean_interval=None, **options))
        assert proxy.silent.is_set()
        print(f"FIGURES start {kind}, silent while {step}: {error!r} after {took:.2f} s")
        assert_timed_out(error, took, step)
    finally:
        proxy.close()
    with Store(pg.url, table_name=pg.table_name, clean_interval=None) as store:
        assert store.inc_sequence(store.new_session().session_id, "view") == 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_start_waits_for_another_sessions_migration_lock_at_most_the_timeout(
    pg: Backend, kind: str
) -> None:
    """Another session holds the table's migration lock (a migration running, or
    stuck, in another process): start() fails with StoreUnavailable naming the lock
    within the store's timeout, and starts once the lock is let go."""
    key = zlib.crc32(f"sauce_sql:{pg.table_name}".encode())
    options: dict[str, Any] = {"table_name": pg.table_name, "timeout": TIMEOUT}
    cls = store_class(kind)
    with admin(pg.url) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        error, took = start_in_time(kind, lambda: cls(pg.url, clean_interval=None, **options))
        holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
    print(f"FIGURES start {kind}, migration lock held elsewhere: {error!r} after {took:.2f} s")
    assert isinstance(error, StoreUnavailable), repr(error)
    assert "migration lock" in str(error), str(error)
    assert f"{TIMEOUT:g} s" in str(error)
    assert took < 3 * TIMEOUT, took
    error, _ = start_in_time(kind, lambda: cls(pg.url, clean_interval=None, **options))
    assert error is None


def test_start_on_the_applications_engine_with_a_frozen_server_fails_within_the_timeout(
    pg: Backend,
) -> None:
    """The application's Engine holds a pooled connection whose server process is then
    stopped (SIGSTOP): a store started on that engine fails with StoreUnavailable
    naming the schema check within its timeout, and works once the process resumes."""
    url, name = tagged_url(pg.url, "sauce_start")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:  # one connection, left idle in the pool
            connection.execute(sa.text("SELECT 1"))
        options: dict[str, Any] = {"table_name": pg.table_name, "timeout": TIMEOUT}
        with frozen(pg.url, name, backstop=WAIT):
            error, took = start_in_time(
                "sync", lambda: Store(engine=engine, clean_interval=None, **options)
            )
        print(f"FIGURES start on a frozen application engine: {error!r} after {took:.2f} s")
        assert_timed_out(error, took, "checking the schema")
        with Store(engine=engine, clean_interval=None, **options) as store:
            assert store.inc_sequence(store.new_session().session_id, "view") == 1
    finally:
        engine.dispose()


def test_asyncstore_on_the_applications_frozen_asyncengine_fails_within_the_timeout(
    pg: Backend,
) -> None:
    """As above with the application's AsyncEngine: AsyncStore.start() fails naming the
    schema check within its timeout, and the loop is not held meanwhile."""
    from sqlalchemy.ext.asyncio import create_async_engine

    url, name = tagged_url(pg.url, "sauce_astart")
    options: dict[str, Any] = {"table_name": pg.table_name, "timeout": TIMEOUT}
    outcome: list[tuple[BaseException | None, float, float]] = []

    async def scenario() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:  # left idle in the pool
                await connection.execute(sa.text("SELECT 1"))
            store = AsyncStore(engine=engine, clean_interval=None, **options)
            with frozen(pg.url, name, backstop=WAIT):
                ticks = [time.monotonic()]
                gaps = [0.0]

                async def tick() -> None:
                    while True:
                        await asyncio.sleep(0.001)
                        gaps.append(time.monotonic() - ticks[-1])
                        ticks.append(time.monotonic())

                ticker = asyncio.get_running_loop().create_task(tick())
                began = time.monotonic()
                error: BaseException | None = None
                try:
                    await store.start()
                except BaseException as exc:
                    error = exc
                outcome.append((error, time.monotonic() - began, max(gaps)))
                ticker.cancel()
            await store.close()
            async with AsyncStore(engine=engine, clean_interval=None, **options) as again:
                sid = (await again.new_session()).session_id
                assert await again.inc_sequence(sid, "view") == 1
        finally:
            await engine.dispose()

    thread = threading.Thread(target=lambda: asyncio.run(scenario()), daemon=True)
    thread.start()
    thread.join(2 * WAIT)
    assert outcome, f"start() did not return in {WAIT} s"
    assert not thread.is_alive()
    error, took, worst = outcome[0]
    print(f"FIGURES AsyncStore start on a frozen AsyncEngine: {error!r} after {took:.2f} s")
    assert_timed_out(error, took, "checking the schema")
    assert worst < 0.2, f"the loop was held for {worst * 1000:.0f} ms"
