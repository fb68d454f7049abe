"""AsyncStore on a real event loop: it never holds the loop while it waits, counts
exactly under many tasks, cleans in a task of its own, and shares a file with Store.

The behaviour suite (test_store.py and friends) runs on AsyncStore too, through
tests/_facade.py; these are the checks only an event loop can make.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _support import frozen, tagged_url
from conftest import Backend, make_backend

from sauce_sql import AsyncStore, ReviveSession, SauceSQLError, Store, StoreUnavailable

T = TypeVar("T")

WAIT = 30.0  # seconds; only reached when something is broken


class Ticker:
    """A task that wakes every millisecond and keeps the longest gap it saw: how long
    the loop was held."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last)
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def run(coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run the test's coroutine on a fresh loop."""
    return asyncio.run(asyncio.wait_for(coroutine(), WAIT))


@contextmanager
def write_lock_held(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process takes the file's write lock and keeps it for ``seconds``."""
    code = (
        "import sqlite3, sys, time\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n"
        "c.execute('COMMIT')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.wait(WAIT)
        assert child.stdout is not None
        child.stdout.close()


def test_the_loop_runs_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    """A write waiting a second for another process's lock waits off the loop: the
    loop keeps ticking, reads answer meanwhile, and the write then lands once."""
    path = tmp_path / "locked.db"

    async def scenario() -> tuple[float, int, float]:
        async with AsyncStore(f"sqlite:///{path}", clean_interval=None) as store:
            sid = (await store.new_session()).session_id
            with write_lock_held(path, 1.0), Ticker() as ticker:
                began = time.perf_counter()
                write = asyncio.ensure_future(store.inc_sequence(sid, "view"))
                await asyncio.sleep(0.1)
                assert not write.done()
                assert await store.session_exists(sid)  # reads do not wait
                count = await write
                waited = time.perf_counter() - began
            return ticker.worst, count, waited

    worst, count, waited = run(scenario)
    assert count == 1
    assert waited >= 0.5  # it did wait for the lock
    assert worst < 0.2, f"the loop was held for {worst * 1000:.0f} ms"


def test_a_write_that_never_gets_the_lock_fails_in_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write whose lock stays taken ends in StoreUnavailable at its deadline, off the
    loop, and changes nothing."""
    from sauce_sql.backends.sqlite import dialect, executor

    monkeypatch.setattr(dialect, "BUSY_TIMEOUT_MS", 500)
    monkeypatch.setattr(executor, "BUSY_TIMEOUT_MS", 500)
    path = tmp_path / "stuck.db"

    async def scenario() -> float:
        async with AsyncStore(f"sqlite:///{path}", clean_interval=None) as store:
            sid = (await store.new_session()).session_id
            with (
                write_lock_held(path, 2.0),
                Ticker() as ticker,
                pytest.raises(StoreUnavailable, match="locked"),
            ):
                await store.inc_sequence(sid, "view")
            session = await store.lookup_session(sid)
            assert session is not None
            assert session.view_sequence == 0
            return ticker.worst

    assert run(scenario) < 0.2


@pytest.fixture
def tagged(tmp_path: Path) -> Iterator[tuple[Backend, str, str]]:
    """PostgreSQL, a store URL tagged with its own application_name, and that name."""
    for backend in make_backend("postgresql", tmp_path):
        url, name = tagged_url(backend.url, "sauce_async")
        yield backend, url, name


@pytest.mark.postgresql
def test_the_loop_runs_while_the_server_is_silent(tagged: tuple[Backend, str, str]) -> None:
    """With the server's processes frozen, a call ends in StoreUnavailable within the
    store's timeout while the loop keeps ticking, and the store works once the server
    answers again."""
    backend, url, name = tagged

    async def scenario() -> tuple[float, float]:
        options: dict[str, Any] = {"table_name": backend.table_name, "timeout": 1.0}
        async with AsyncStore(url, clean_interval=None, **options) as store:
            sid = (await store.new_session()).session_id
            with Ticker() as ticker, frozen(backend.direct_url, name, backstop=WAIT):
                began = time.perf_counter()
                with pytest.raises(StoreUnavailable, match="did not answer"):
                    await store.inc_sequence(sid, "view")
                took = time.perf_counter() - began
            assert await store.inc_sequence(sid, "event") == 1
            return ticker.worst, took

    worst, took = run(scenario)
    assert took < 3.0
    assert worst < 0.2, f"the loop was held for {worst * 1000:.0f} ms"


def test_a_server_that_never_answers_the_connect_fails_start_in_bounded_time() -> None:
    """A server that accepts connections and never speaks: start() fails with
    StoreUnavailable within the connect timeout, and the loop is never held."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]

    async def scenario() -> tuple[float, float]:
        store = AsyncStore(f"postgresql://u@127.0.0.1:{port}/db", timeout=2.0)
        with Ticker() as ticker:
            began = time.perf_counter()
            with pytest.raises(StoreUnavailable):
                await store.start()
            return ticker.worst, time.perf_counter() - began

    pytest.importorskip("psycopg")
    try:
        worst, took = run(scenario)
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
    assert took < 10.0
    assert worst < 0.2


def test_many_tasks_on_a_few_hot_sessions_count_exactly(backend: Backend) -> None:
    """64 tasks incrementing 4 sessions at once: every increment is counted once."""
    tasks, rounds = 64, 20

    async def scenario() -> list[int]:
        backend.migrate(backend.table_name)
        options: dict[str, Any] = {"table_name": backend.table_name, "clean_interval": None}
        async with AsyncStore(backend.url, **options) as store:
            sids = [(await store.new_session(f"hot{n}")).session_id for n in range(4)]

            async def work(n: int) -> None:
                for _ in range(rounds):
                    await store.inc_sequence(sids[n % 4], "view")

            await asyncio.gather(*(work(n) for n in range(tasks)))
            found = [await store.lookup_session(sid) for sid in sids]
            return [session.view_sequence for session in found if session is not None]

    assert run(scenario) == [tasks * rounds // 4] * 4


def test_concurrent_revivals_of_one_id_make_one_row(backend: Backend) -> None:
    """32 tasks reviving one id at once all get the same live session, and one row."""

    async def scenario() -> set[str]:
        backend.migrate(backend.table_name)
        options: dict[str, Any] = {"table_name": backend.table_name, "clean_interval": None}
        async with AsyncStore(backend.url, **options) as store:
            revive = ReviveSession("one-id", user_agent="ua")
            got = await asyncio.gather(*(store.maybe_revive_session(revive) for _ in range(32)))
            assert await store.inc_sequence("one-id", "view") == 1
            return {session.session_id for session in got}

    assert run(scenario) == {"one-id"}


def test_the_cleaner_is_a_task_that_cleans_and_stops_on_close(tmp_path: Path) -> None:
    """With clean_interval set, expired rows go without a call, and close() ends the
    cleaner's task."""
    from conftest import FakeClock

    clock = FakeClock()

    async def scenario() -> None:
        store = AsyncStore(
            f"sqlite:///{tmp_path / 'clean.db'}",
            session_max_age=10,
            clean_interval=0.05,
            clock=clock,
        )
        await store.start()
        assert store.get_state().cleaner_running
        sid = (await store.new_session()).session_id
        clock.advance(11)
        for _ in range(200):
            if store.get_state().total_cleaned:
                break
            await asyncio.sleep(0.02)
        assert store.get_state().total_cleaned == 1
        assert not await store.session_exists(sid)
        cleaner = store._cleaner
        await store.close()
        assert cleaner is not None
        assert cleaner.done()
        assert not store.get_state().cleaner_running

    run(scenario)


def test_sync_and_async_stores_on_one_file_count_together(tmp_path: Path) -> None:
    """A Store's threads and an AsyncStore's tasks incrementing one session of one file
    at once: every increment counts, and each store sees the other's writes."""
    url = f"sqlite:///{tmp_path / 'both.db'}"
    per_thread, threads, tasks = 200, 4, 8
    with Store(url, clean_interval=None) as sync:
        sid = sync.new_session().session_id

        def hammer() -> None:
            for _ in range(per_thread):
                sync.inc_sequence(sid, "view")

        async def scenario() -> int:
            async with AsyncStore(url, clean_interval=None) as store:
                workers = [threading.Thread(target=hammer) for _ in range(threads)]
                for worker in workers:
                    worker.start()

                async def work() -> None:
                    for _ in range(per_thread):
                        await store.inc_sequence(sid, "view")

                await asyncio.gather(*(work() for _ in range(tasks)))
                for worker in workers:
                    await asyncio.to_thread(worker.join)
                session = await store.lookup_session(sid)
                assert session is not None
                return session.view_sequence

        assert run(scenario) == per_thread * (threads + tasks)
        session = sync.lookup_session(sid)
        assert session is not None
        assert session.view_sequence == per_thread * (threads + tasks)


def test_a_cancelled_write_is_applied_at_most_once(tmp_path: Path) -> None:
    """A write cancelled while it waits for the lock may still land, once; the store
    goes on working."""
    path = tmp_path / "cancel.db"

    async def scenario() -> int:
        async with AsyncStore(f"sqlite:///{path}", clean_interval=None) as store:
            sid = (await store.new_session()).session_id
            with write_lock_held(path, 0.5):
                write = asyncio.ensure_future(store.inc_sequence(sid, "view"))
                await asyncio.sleep(0.1)
                write.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await write
            next_count = await store.inc_sequence(sid, "view")
            session = await store.lookup_session(sid)
            assert session is not None
            assert session.view_sequence == next_count
            return next_count

    assert run(scenario) in (1, 2)


@pytest.mark.postgresql
def test_a_call_cancelled_mid_statement_leaves_the_store_working(
    tagged: tuple[Backend, str, str],
) -> None:
    """Cancelling a call while the server holds it: the next calls work and count from
    where the database is."""
    backend, url, name = tagged

    async def scenario() -> int:
        options: dict[str, Any] = {"table_name": backend.table_name}
        async with AsyncStore(url, clean_interval=None, **options) as store:
            sid = (await store.new_session()).session_id
            with frozen(backend.direct_url, name, backstop=WAIT):
                write = asyncio.ensure_future(store.inc_sequence(sid, "view"))
                await asyncio.sleep(0.2)
                write.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await write
            counts = [await store.inc_sequence(sid, "event") for _ in range(3)]
            assert counts == [1, 2, 3]
            session = await store.lookup_session(sid)
            assert session is not None
            return session.view_sequence

    assert run(scenario) in (0, 1)


def test_operations_need_a_started_async_store() -> None:
    """Before start() and after close(), operations raise SauceSQLError; state answers."""

    async def scenario() -> None:
        store = AsyncStore("sqlite://", clean_interval=None)
        with pytest.raises(SauceSQLError, match="not started"):
            await store.lookup_session("x")
        assert store.get_state().dialect == "sqlite"
        await store.start()
        await store.start()  # idempotent
        await store.close()
        await store.close()
        with pytest.raises(SauceSQLError, match="not started"):
            await store.inc_sequence("x", "view")

    run(scenario)


def _on_application_engine(url: str, table: str) -> int:
    """Serve through AsyncStore(engine=...) on ``url``; then read the count back through
    the same engine, after the store has closed."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def scenario() -> int:
        engine = create_async_engine(url)
        try:
            async with AsyncStore(engine=engine, table_name=table, clean_interval=None) as store:
                assert store.engine is engine
                sid = (await store.new_session()).session_id
                assert await store.inc_sequence(sid, "view") == 1
            async with engine.connect() as connection:  # still the application's
                found = await connection.execute(
                    text(f"SELECT view_sequence FROM {table} WHERE session_id = :s"), {"s": sid}
                )
                return int(found.scalar_one())
        finally:
            await engine.dispose()

    return run(scenario)


def test_an_application_aiosqlite_engine_is_used_and_never_disposed(tmp_path: Path) -> None:
    """AsyncStore(engine=...) on a sqlite+aiosqlite AsyncEngine migrates the file and
    serves it, and leaves the engine working after close()."""
    assert _on_application_engine(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", "sessions") == 1


@pytest.mark.postgresql
def test_an_application_psycopg_engine_is_used_and_never_disposed(
    tagged: tuple[Backend, str, str],
) -> None:
    """AsyncStore(engine=...) on a postgresql+psycopg AsyncEngine migrates through
    run_sync and serves on the engine's connections, and leaves it working."""
    backend, url, _ = tagged
    assert _on_application_engine(url, backend.table_name) == 1


def test_a_synchronous_engine_is_refused_by_async_store() -> None:
    """AsyncStore(engine=...) takes an AsyncEngine; a plain Engine is a TypeError."""
    import sqlalchemy as sa

    with pytest.raises(TypeError, match="AsyncEngine"):
        AsyncStore(engine=sa.create_engine("sqlite://"))


@pytest.fixture(params=["pgbouncer_transaction", "pgbouncer_statement"])
def pooled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL through a real PgBouncer in transaction and in statement mode."""
    yield from make_backend(request.param, tmp_path)


@pytest.mark.postgresql
def test_asyncpg_through_pgbouncer_counts_exactly(pooled: Backend) -> None:
    """AsyncStore on asyncpg through PgBouncer, 16 tasks on one session: every
    increment lands in the right column (no statement cache by default)."""
    import sqlalchemy as sa

    url = sa.make_url(pooled.url).set(drivername="postgresql+asyncpg")

    async def scenario() -> tuple[int, int]:
        options: dict[str, Any] = {"table_name": pooled.table_name, "clean_interval": None}
        async with AsyncStore(url, **options) as store:
            sid = (await store.new_session()).session_id

            async def work() -> None:
                for n in range(40):
                    await store.inc_sequence(sid, "view" if n % 4 else "event")

            await asyncio.gather(*(work() for _ in range(16)))
            session = await store.lookup_session(sid)
            assert session is not None
            return session.view_sequence, session.event_sequence

    assert run(scenario) == (16 * 30, 16 * 10)
