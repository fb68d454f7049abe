"""The store's PostgreSQL connections: every call bounded, a connection interrupted
mid-call never given back busy, connections lent longest waiter first, a budget kept.

Calls are made slow for real: a row lock held by another server session, or the
server processes serving the store stopped with SIGSTOP (and resumed with SIGCONT).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _support import admin, alarm, frozen, tagged_url, wait_for
from conftest import Backend, make_backend

from sauce_sql import InvalidInput, Store, StoreUnavailable

pytestmark = pytest.mark.postgresql

WAIT = 30.0  # seconds; only reached when something is broken


@pytest.fixture(params=["postgresql", "pgbouncer_transaction", "pgbouncer_statement"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, str, str]]:
    """PostgreSQL, directly and through PgBouncer in transaction and statement mode: the
    backend, a store URL tagged with its own application_name, and that name."""
    for backend in make_backend(request.param, tmp_path):
        url, name = tagged_url(backend.url, "sauce_server")
        yield backend, url, name


@pytest.fixture(params=["postgresql", "pgbouncer_transaction"])
def busy_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL directly and through PgBouncer in transaction mode."""
    yield from make_backend(request.param, tmp_path)


@pytest.fixture
def direct(tmp_path: Path) -> Iterator[tuple[Backend, str, str]]:
    """PostgreSQL itself, where each connection of the store is a server session."""
    for backend in make_backend("postgresql", tmp_path):
        url, name = tagged_url(backend.url, "sauce_budget")
        yield backend, url, name


@contextmanager
def row_locked(url: str, table: str, session_id: str) -> Iterator[None]:
    """Lock one session's row from another server session: a statement writing it
    waits for the server until the block ends."""
    with admin(url) as connection:
        connection.execute("BEGIN")
        connection.execute(
            f'SELECT 1 FROM "{table}" WHERE session_id = %s FOR UPDATE', (session_id,)
        )
        try:
            yield
        finally:
            connection.execute("ROLLBACK")


def blocked(url: str, table: str) -> int:
    """How many statements on ``table`` wait for a lock on the server."""
    with admin(url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{table}%",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def server_sessions(url: str, application_name: str) -> set[tuple[int, Any]]:
    """The server sessions tagged ``application_name``: (pid, start time) each."""
    with admin(url) as connection:
        rows = connection.execute(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchall()
    return {(row[0], row[1]) for row in rows}


class RequestTimeout(Exception):
    """What a web server's request timer raises from its SIGALRM handler."""


# -- interrupted calls ----------------------------------------------------------------


@pytest.mark.parametrize("interrupt", [RequestTimeout, KeyboardInterrupt])
def test_a_call_interrupted_by_a_signal_leaves_the_store_working(
    server: tuple[Backend, str, str], interrupt: type[BaseException]
) -> None:
    """An exception raised by a signal handler while a call waits for the server ends
    that call, the server stops running its statement, and the next calls work."""
    backend, url, _ = server
    table = backend.table_name
    with Store(url, table_name=table, clean_interval=None) as store:
        store.new_session("k")
        with row_locked(backend.direct_url, table, "k"):
            with pytest.raises(interrupt), alarm(0.3, interrupt):
                store.inc_sequence("k", "view")
            # A read needs no row lock: it runs at once, on a connection of its own.
            assert store.lookup_session("k") is not None
            wait_for(lambda: blocked(backend.direct_url, table) == 0, WAIT, "the cancel")
        assert [store.inc_sequence("k", "event") for _ in range(3)] == [1, 2, 3]
        session = store.lookup_session("k")
        assert session is not None
        assert session.view_sequence == 0  # cancelled while it waited for the lock


# -- a silent server ------------------------------------------------------------------


def test_a_frozen_server_process_fails_the_call_within_the_timeout(
    server: tuple[Backend, str, str],
) -> None:
    """A call whose server process stops answering (SIGSTOP) fails with StoreUnavailable
    naming the timeout, within 3x the store's timeout; once the process resumes the
    store works again."""
    backend, url, name = server
    timeout = 1.0
    with Store(url, table_name=backend.table_name, clean_interval=None, timeout=timeout) as store:
        store.new_session("k")
        with frozen(backend.direct_url, name):
            began = time.monotonic()
            with pytest.raises(StoreUnavailable, match="timeout of 1 s") as caught:
                store.inc_sequence("k", "view")
            took = time.monotonic() - began
        assert caught.value.__cause__ is not None
        assert took < 3 * timeout, took
        print(f"FIGURES frozen {backend.name}: StoreUnavailable after {took:.2f} s")
        assert [store.inc_sequence("k", "event") for _ in range(3)] == [1, 2, 3]
        session = store.lookup_session("k")
        assert session is not None
        assert session.view_sequence in (0, 1)  # the abandoned write may have committed


def test_connecting_to_a_silent_server_gives_up_within_a_shorter_timeout() -> None:
    """A server that accepts the TCP connection and never answers fails start() within
    3x a timeout shorter than the 5 s connect timeout (libpq waits 2 s at least)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/test"
        timeout = 1.0
        store = Store(url, clean_interval=None, timeout=timeout)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.start()
        assert time.monotonic() - began < 3 * timeout
        store.close()


def test_frozen_readers_fail_within_the_timeout_too(direct: tuple[Backend, str, str]) -> None:
    """Threads reading while their server processes are stopped each fail within 3x
    the timeout (a read is not retried past it), and the store serves after."""
    backend, url, name = direct
    timeout = 1.0
    with Store(url, table_name=backend.table_name, clean_interval=None, timeout=timeout) as store:
        store.new_session("k")
        outcomes: list[tuple[BaseException | None, float]] = []
        barrier = threading.Barrier(4)

        def read() -> None:
            barrier.wait(WAIT)
            began = time.monotonic()
            try:
                store.lookup_session("k")
            except StoreUnavailable as exc:
                outcomes.append((exc, time.monotonic() - began))
            else:
                outcomes.append((None, time.monotonic() - began))

        # Four connections open and idle, then all stopped.
        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        outcomes.clear()
        with frozen(backend.direct_url, name):
            threads = [threading.Thread(target=read) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT)
        assert len(outcomes) == 4
        for error, took in outcomes:
            assert took < 3 * timeout, took
            assert error is None or "timeout" in str(error)
        assert any(error is not None for error, _ in outcomes)
        assert store.lookup_session("k") is not None


# -- fair slots -----------------------------------------------------------------------


@pytest.mark.slow
def test_no_caller_starves_for_a_connection(busy_server: Backend) -> None:
    """64 threads calling one store (10 connections) for 4 s: no call fails, every
    thread is served again and again, and no call waits seconds for its turn."""
    backend = busy_server
    threads, seconds = 64, 4.0
    with Store(backend.url, table_name=backend.table_name, clean_interval=None) as store:
        sids = [store.new_session().session_id for _ in range(threads)]
        worst = [0.0] * threads
        calls = [0] * threads
        errors: list[BaseException] = []
        barrier = threading.Barrier(threads)
        stop = [0.0]

        def work(n: int) -> None:
            try:
                barrier.wait(WAIT)
                stop[0] = stop[0] or time.monotonic() + seconds
                while time.monotonic() < stop[0]:
                    began = time.monotonic()
                    store.inc_sequence(sids[n], "view")
                    worst[n] = max(worst[n], time.monotonic() - began)
                    calls[n] += 1
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT * 2)
        assert errors == []
        print(
            f"FIGURES fairness {backend.name}: {sum(calls)} calls, fewest per thread "
            f"{min(calls)}, worst call {max(worst):.3f} s"
        )
        assert min(calls) >= 5
        assert max(worst) < 2.5
        for n in (0, threads - 1):
            session = store.lookup_session(sids[n])
            assert session is not None
            assert session.view_sequence == calls[n]


# -- the connection budget ------------------------------------------------------------


def burst(store: Store, backend: Backend, threads: int, holding: int) -> None:
    """``threads`` threads increment one session at once, with the row locked until
    ``holding`` of their statements wait on the server: all of the store's connections."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            store.inc_sequence("hot", "view")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    with row_locked(backend.direct_url, backend.table_name, "hot"):
        for worker in workers:
            worker.start()
        wait_for(
            lambda: blocked(backend.direct_url, backend.table_name) >= holding,
            WAIT,
            f"{holding} statements in flight",
        )
    for worker in workers:
        worker.join(WAIT)
    assert errors == []


def test_a_second_burst_opens_no_server_session(direct: tuple[Backend, str, str]) -> None:
    """Two bursts of 16 threads, each using all of the store's connections (10 by
    default): the second runs on the server sessions the first opened, none closed."""
    backend, url, name = direct
    with Store(url, table_name=backend.table_name, clean_interval=None) as store:
        store.new_session("hot")
        burst(store, backend, 16, holding=10)
        first = server_sessions(backend.direct_url, name)
        burst(store, backend, 16, holding=10)
        second = server_sessions(backend.direct_url, name)
        print(f"FIGURES bursts: {len(second - first)} new server sessions in the second")
        assert second == first
        session = store.lookup_session("hot")
        assert session is not None
        assert session.view_sequence == 32


def test_max_connections_bounds_the_server_sessions(direct: tuple[Backend, str, str]) -> None:
    """With max_connections=3, 8 threads at once use 3 server sessions, the others
    waiting their turn; max_idle_connections=1 keeps one of them open afterwards."""
    backend, url, name = direct
    options: dict[str, Any] = {"max_connections": 3, "max_idle_connections": 1}
    with Store(url, table_name=backend.table_name, clean_interval=None, **options) as store:
        store.new_session("hot")
        # The store holds one connection after its first call; any other session of
        # the tag (the engine's, should it keep one) is not the store's.
        others = len(server_sessions(backend.direct_url, name)) - 1
        seen: list[int] = []

        def count() -> bool:
            seen.append(len(server_sessions(backend.direct_url, name)) - others)
            return blocked(backend.direct_url, backend.table_name) >= 3

        errors: list[BaseException] = []

        def work() -> None:
            try:
                store.inc_sequence("hot", "view")
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=work) for _ in range(8)]
        with row_locked(backend.direct_url, backend.table_name, "hot"):
            for worker in workers:
                worker.start()
            wait_for(count, WAIT, "3 statements in flight")
            time.sleep(0.2)  # room for a fourth connection, were one to be opened
            count()
        for worker in workers:
            worker.join(WAIT)
        assert errors == []
        assert max(seen) == 3
        assert len(server_sessions(backend.direct_url, name)) - others == 1
        session = store.lookup_session("hot")
        assert session is not None
        assert session.view_sequence == 8


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"timeout": 0}, InvalidInput),
        ({"timeout": -1.0}, InvalidInput),
        ({"timeout": float("nan")}, InvalidInput),
        ({"timeout": float("inf")}, InvalidInput),
        ({"timeout": 1e9}, InvalidInput),
        ({"timeout": "10"}, TypeError),
        ({"timeout": True}, TypeError),
        ({"max_connections": 0}, InvalidInput),
        ({"max_connections": -3}, InvalidInput),
        ({"max_connections": 2.0}, TypeError),
        ({"max_connections": True}, TypeError),
        ({"max_connections": "10"}, TypeError),
        ({"max_idle_connections": -1}, InvalidInput),
        ({"max_idle_connections": 11}, InvalidInput),
        ({"max_idle_connections": 5, "max_connections": 4}, InvalidInput),
        ({"max_idle_connections": 1.5}, TypeError),
    ],
)
def test_bad_connection_options_are_refused(
    postgres_url: str, options: dict[str, Any], error: type[Exception]
) -> None:
    """A bad timeout or connection budget is refused in the constructor, naming the
    option."""
    with pytest.raises(error, match=next(iter(options))):
        Store(postgres_url, **options)
