"""Helpers shared by the reliability tests: child processes, PostgreSQL backends, waiting.

Child processes are started with the ``spawn`` method, so that they begin with no
inherited connections, locks or threads, and find their worker functions by importing
the test module (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from conftest import FakeClock

from sauce_sql import Store

SPAWN = multiprocessing.get_context("spawn")
# Later than any expiry a test makes: cleanup(now=FAR_FUTURE) deletes every row.
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=timezone.utc)


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.01
) -> Any:
    """Poll ``predicate`` every ``interval`` s until it returns something truthy; fail
    after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def tagged_url(base: str, prefix: str) -> tuple[str, str]:
    """``base`` with a unique ``application_name``, and that name: it picks out the
    server processes (backends) serving one store in ``pg_stat_activity``."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = sa.make_url(base).update_query_dict({"application_name": name})
    return url.render_as_string(hide_password=False), name


def libpq_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as a plain libpq connection string."""
    parsed = sa.make_url(url).set(drivername="postgresql")
    parsed = parsed.difference_update_query(["application_name"])
    return parsed.render_as_string(hide_password=False)


@contextmanager
def admin(url: str) -> Iterator[Any]:
    """A separate autocommit connection to the server, for inspecting and killing."""
    import psycopg  # only the PostgreSQL tests need the driver

    with psycopg.connect(libpq_dsn(url), autocommit=True, connect_timeout=5) as connection:
        yield connection


def backend_pids(url: str, application_name: str) -> list[int]:
    """The server processes serving connections tagged ``application_name``."""
    with admin(url) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
        ).fetchall()
    return [row[0] for row in rows]


def terminate_backends(url: str, application_name: str) -> int:
    """Kill every server process serving ``application_name``; return how many died."""
    with admin(url) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return sum(1 for (killed,) in rows if killed)


class CounterLog:
    """What one client saw of one counter: acknowledged values and failed calls."""

    def __init__(self) -> None:
        self.last = 0
        self.failed_since_last = 0
        self.acked = 0
        self.failed = 0

    def ok(self, value: int) -> None:
        """An acknowledged increment: one more than before, or more only by as many
        calls as failed in between (a failed call may or may not have committed)."""
        assert self.last < value <= self.last + 1 + self.failed_since_last, (self.last, value)
        self.last, self.failed_since_last = value, 0
        self.acked += 1

    def fail(self) -> None:
        """A call that raised StoreUnavailable."""
        self.failed_since_last += 1
        self.failed += 1


def assert_cleaner_works(store: Store, url: str, table: str) -> None:
    """The store's background cleaner is running and removes newly expired sessions."""
    cleaned_before = store.get_state().total_cleaned
    past = FakeClock(datetime.now(timezone.utc) - timedelta(hours=2))
    with Store(url, table_name=table, clean_interval=None, clock=past) as old:
        for n in range(20):
            old.new_session(f"old-{n}-{uuid.uuid4().hex[:8]}")
    wait_for(lambda: store.get_state().total_cleaned >= cleaned_before + 20, 30, "the cleaner")
    assert store.get_state().cleaner_running


def run_children(
    target: Callable[..., None],
    args: list[tuple[Any, ...]],
    timeout: float,
    started: Callable[[], None] | None = None,
) -> list[Any]:
    """Run one spawned child of ``target`` per ``args`` (each also given a result queue),
    call ``started`` once they are running, and collect one result from each."""
    results = SPAWN.Queue()
    children = [SPAWN.Process(target=target, args=(*a, results), daemon=True) for a in args]
    for child in children:
        child.start()
    try:
        if started is not None:
            started()
        collected = []
        for _ in children:
            try:
                collected.append(results.get(timeout=timeout))
            except queue.Empty:
                codes = [child.exitcode for child in children]
                raise AssertionError(f"a child gave no result; exit codes {codes}") from None
        for child in children:
            child.join(timeout)
            assert child.exitcode == 0
        return collected
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
        results.close()
        results.join_thread()


@contextmanager
def alarm(seconds: float, error: type[BaseException]) -> Iterator[None]:
    """Raise ``error`` from a SIGALRM handler in the main thread after ``seconds``, as
    a request timer or Celery's soft time limit does."""

    def ring(_signum: int, _frame: object) -> None:
        raise error("the request took too long")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def table_names(url: str) -> set[str]:
    """The tables of the database's default schema at ``url``."""
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@contextmanager
def frozen(url: str, application_name: str, backstop: float = 30.0) -> Iterator[list[int]]:
    """Stop the server processes serving ``application_name`` (SIGSTOP), and resume
    them on leaving, or after ``backstop`` seconds should a call hang (the defect)."""
    pids = backend_pids(url, application_name)
    assert pids

    def resume() -> None:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(backstop, resume)
    timer.start()
    try:
        yield pids
    finally:
        timer.cancel()
        resume()
