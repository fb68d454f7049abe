"""Cleanup of 100k expired rows while writers run: no writer stalls, no live row goes.

Writer threads increment live sessions and revive expired ones while cleanup runs, in
this process or in one or several other processes at once. On SQLite no write may wait more than
0.5 s; on every backend every live or revived session survives, every expired row is
archived exactly once, and every acknowledged increment is stored.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from _support import SPAWN, admin, run_children
from conftest import Backend

from sauce_sql import ReviveSession, Store

pytestmark = pytest.mark.slow

EXPIRED = 100_000
LIVE = 200
REVIVABLE = 200
REVIVABLE_VIEWS = 7
WRITERS = 2
LONGEST_WRITE = 0.5  # seconds: the bound on SQLite
CLEANING_PROCESSES = 3

COLUMNS = (
    "session_id, user_agent, client_ip, user_id, view_sequence, event_sequence,"
    " created_at, last_modified, expires_at"
)


def insert_expired(backend: Backend, prefix: str, count: int, views: int, step: float) -> None:
    """Insert ``count`` expired rows straight into the table, the n-th expiring an hour
    ago plus n * ``step`` seconds (so that rows of two calls interleave in index order)."""
    now = datetime.now(timezone.utc)
    created, base = now - timedelta(hours=2), now - timedelta(hours=1)
    table = backend.table_name
    if backend.dialect == "postgresql":
        with admin(backend.url) as connection:
            connection.execute(
                f"INSERT INTO {table} ({COLUMNS}) SELECT %s || g, '', NULL, NULL, %s, 0,"
                " %s, %s, %s + g * %s FROM generate_series(1, %s) AS g",
                (prefix, views, created, created, base, timedelta(seconds=step), count),
            )
        return
    database = sa.make_url(backend.url).database
    assert database is not None
    text = "%Y-%m-%d %H:%M:%S.%f"
    stamp = created.strftime(text)
    rows = (
        (f"{prefix}{n}", views, stamp, stamp, (base + timedelta(seconds=n * step)).strftime(text))
        for n in range(1, count + 1)
    )
    with sqlite3.connect(database, timeout=30) as connection:
        connection.executemany(
            f"INSERT INTO {table} ({COLUMNS}) VALUES (?, '', NULL, NULL, ?, 0, ?, ?, ?)", rows
        )
    connection.close()


class Writers:
    """Threads that increment live sessions and revive expired ones, timing each call."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.acked = [0] * LIVE
        self.revived: list[str] = []
        self.longest = 0.0
        self.calls = 0
        self.errors: list[BaseException] = []
        self.started = threading.Event()
        self.cleaning = threading.Event()
        self._next_revival = 1
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,)) for n in range(WRITERS)]

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        assert self.started.wait(30), "the writers did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    def _timed(self, call: Callable[[], Any]) -> Any:
        began = time.monotonic()
        result = call()
        took = time.monotonic() - began
        with self._lock:
            self.longest = max(self.longest, took)
            self.calls += 1
            if self.calls >= 20:
                self.started.set()
        return result

    def _run(self, n: int) -> None:
        try:
            i = n
            while not self.stop.is_set():
                live = i % LIVE
                self._timed(functools.partial(self.store.inc_sequence, f"live-{live}", "view"))
                with self._lock:
                    self.acked[live] += 1
                    # Revivals race the cleanup, so they wait for it to begin.
                    revive = self.cleaning.is_set() and self._next_revival <= REVIVABLE
                    sid = f"rev-{self._next_revival}"
                    self._next_revival += revive
                if revive:
                    self._timed(functools.partial(self.store.revive_session, ReviveSession(sid)))
                    with self._lock:
                        self.revived.append(sid)
                i += WRITERS
        except BaseException as exc:
            self.errors.append(exc)
            self.started.set()


def prepare(backend: Backend, keep_history: bool) -> Store:
    """A started store holding LIVE live sessions, EXPIRED expired rows and REVIVABLE
    expired rows with REVIVABLE_VIEWS views each."""
    store = Store(
        backend.url, table_name=backend.table_name, clean_interval=None, keep_history=keep_history
    ).start()
    for n in range(LIVE):
        store.new_session(f"live-{n}")
    # Spread over the same 100 seconds, so that revivals race every batch.
    insert_expired(backend, "exp-", EXPIRED, 0, step=100 / EXPIRED)
    insert_expired(backend, "rev-", REVIVABLE, REVIVABLE_VIEWS, step=100 / REVIVABLE)
    return store


def check(store: Store, writers: Writers, deleted: int, keep_history: bool) -> None:
    """Nothing live was deleted, every expired row was deleted once, every increment kept."""
    assert not writers.errors, writers.errors
    for n, count in enumerate(writers.acked):
        session = store.lookup_session(f"live-{n}")
        assert session is not None, n
        assert session.view_sequence == count, n
    for sid in writers.revived:
        session = store.lookup_session(sid)
        assert session is not None, sid
        # Revived before cleanup reached it, or from history after: counters kept;
        # without history, one revived after its deletion starts again.
        kept = (REVIVABLE_VIEWS,) if keep_history else (REVIVABLE_VIEWS, 0)
        assert session.view_sequence in kept, sid
    if keep_history:
        table = store.get_state().table_name
        with store.engine.connect() as connection:
            archived = list(
                connection.exec_driver_sql(f'SELECT session_id FROM "{table}_history"').scalars()
            )
        # Every expired session was archived once; the revived ones are live instead.
        assert len(archived) == len(set(archived))
        expected = {f"exp-{n}" for n in range(1, EXPIRED + 1)}
        expected |= {f"rev-{n}" for n in range(1, REVIVABLE + 1)} - set(writers.revived)
        assert set(archived) == expected
    # Rows revived before cleanup reached them never left; the others left once.
    assert EXPIRED + REVIVABLE - len(writers.revived) <= deleted <= EXPIRED + REVIVABLE
    assert store.cleanup() == 0


@pytest.mark.parametrize(
    ("cleaners", "keep_history"),
    [(0, True), (1, True), (CLEANING_PROCESSES, True), (CLEANING_PROCESSES, False)],
    ids=["in_process", "process_archiving", "processes_archiving", "processes_deleting"],
)
def test_cleanup_under_load(persistent_backend: Backend, cleaners: int, keep_history: bool) -> None:
    """Archiving (or deleting) 100k expired rows, in this process or in 1 or 3 other
    processes at once, while writers run loses and duplicates nothing and deletes no
    live row, and no SQLite writer stalls past 0.5 s: a cleaner lets writers of other
    processes in between its batches, and one process cleans a file at a time."""
    backend = persistent_backend
    store = prepare(backend, keep_history)
    try:
        with Writers(store) as writers:
            calls_before = writers.calls
            began = time.monotonic()
            if cleaners == 0:
                writers.cleaning.set()
                deleted = store.cleanup()
            else:
                deleted = clean_in_processes(backend, cleaners, writers.cleaning, keep_history)
            took = time.monotonic() - began
            calls_during = writers.calls - calls_before
        revived = len(writers.revived)
        print(
            f"FIGURES cleanup {backend.name} x{cleaners}: deleted={deleted} in {took:.2f}s,"
            f" writer calls during={calls_during}, revived during={revived},"
            f" longest write={writers.longest * 1000:.0f}ms"
        )
        check(store, writers, deleted, keep_history)
        assert calls_during >= 10, "the writers hardly ran while cleanup ran"
        if backend.name == "sqlite_file":
            assert writers.longest < LONGEST_WRITE
    finally:
        store.close()


def cleaner_child(
    url: str, table: str, keep_history: bool, barrier: Any, results: Any
) -> None:  # pragma: no cover
    """Child: start a store, wait for the others, clean up once, report the count."""
    with Store(url, table_name=table, clean_interval=None, keep_history=keep_history) as store:
        barrier.wait(60)
        results.put(store.cleanup())


def clean_in_processes(
    backend: Backend, count: int, cleaning: threading.Event, keep_history: bool
) -> int:
    """Run cleanup in ``count`` processes at once (setting ``cleaning`` as they begin);
    return how many rows they deleted."""
    barrier = SPAWN.Barrier(count + 1)

    def started() -> None:
        barrier.wait(60)
        cleaning.set()

    args = [(backend.url, backend.table_name, keep_history, barrier)] * count
    return sum(run_children(cleaner_child, args, 120, started))
