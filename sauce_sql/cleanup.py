"""Deleting expired sessions: the batched delete and the background cleaner thread."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql.backends import backend_for
from sauce_sql.backends.base import Result
from sauce_sql.engine import is_memory
from sauce_sql.ops import CHECKPOINT, Operation, Pause, Step
from sauce_sql.prepared import Prepared

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_FRUITLESS",
    "MIN_BATCH_ROWS",
    "START_BATCH_ROWS",
    "START_MOVE_ROWS",
    "Cleaner",
    "Batch",
    "CleanupStatements",
    "StopSignal",
    "cleanup_round",
    "delete_expired",
]

logger = logging.getLogger("sauce_sql.cleanup")

#: The first batch's size (a few ms on SQLite on a laptop); later ones adapt to the
#: time budget within the bounds.
START_BATCH_ROWS = 1000
#: Archiving's first batch: a move costs several times a delete per row, and before
#: the first batch nothing tells how fast this disk is (see delete_expired).
START_MOVE_ROWS = START_BATCH_ROWS // 4
MIN_BATCH_ROWS = 100
MAX_BATCH_ROWS = 50_000
#: Batches in a row that delete nothing before a cleanup gives up until next time.
MAX_FRUITLESS = 3
#: The longest pause between two batches (s; see Backend.batch_pause).
MAX_PAUSE = 0.05
_LONGEST_WAIT = 86_400.0


class CleanupStatements(Protocol):
    """The prepared statements a cleanup runs (see :mod:`sauce_sql.statements`)."""

    delete_expired_batch: Prepared
    expired_bound: Prepared
    delete_expired_upto: Prepared


@contextmanager
def cleanup_round(engine: Engine, table_name: str, *, wait: float | None = None) -> Iterator[bool]:
    """Whether this process runs a cleanup round of ``table_name`` now.

    ``wait=None``: the background cleaner's round, skipped while another is under way.
    A number: a called cleanup, which cleans in any case (it promises to delete every
    expired row), on SQLite once the round under way has ended or ``wait`` seconds
    have passed.

    On PostgreSQL the background round holds a transaction-scoped advisory lock on a
    connection of its own, so when many app servers run the cleaner one runs a round
    and the others skip it at the cost of one query. A transaction-scoped lock, unlike
    a session one, works through a pooler in transaction mode (the round's transaction
    keeps its server connection). Where no transaction can be had (statement pooling)
    every process cleans, which is safe, only wasted work. A SQLite file: its cleanup
    lease (:mod:`sauce_sql.backends.sqlite.lease`), so that writers of other processes
    wait behind one cleaner at most.
    """
    if not backend_for(engine.dialect.name).server:
        if is_memory(engine.url) or engine.url.database is None:
            yield True  # one process's own database
            return
        from sauce_sql.backends.sqlite.lease import cleanup_lease

        with cleanup_lease(engine.url.database, wait=wait) as ours:
            yield ours
        return
    if wait is not None:
        yield True
        return
    key = zlib.crc32(f"sauce_sql:cleanup:{table_name}".encode())
    try:
        connection = engine.connect()
    except SQLAlchemyError:
        yield True  # the batches will report what is wrong with the server
        return
    with connection:
        connection.execution_options(isolation_level="READ COMMITTED")
        try:
            transaction = connection.begin()
            got = connection.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}
            ).scalar()
        except SQLAlchemyError:
            logger.debug("no lock for the cleanup round; cleaning anyway", exc_info=True)
            yield True
            return
        try:
            yield bool(got)
        finally:
            transaction.rollback()


class StopSignal(Protocol):
    """What tells a cleanup to end between batches (a threading or asyncio Event)."""

    def is_set(self) -> bool:
        """Whether the cleanup should end now."""


Batch = Callable[[Any, datetime, int], Generator[Any, Any, tuple[int, bool]]]
"""One cleanup batch as an operation: ``batch(statements, now, rows)`` removes at most
``rows`` rows and returns how many went and whether none are left."""


def delete_expired(
    statements: Any,
    now: datetime,
    *,
    dialect_name: str,
    count: Callable[[int], None] | None = None,
    stop: StopSignal | None = None,
    batch: Batch | None = None,
    first_rows: int | None = None,
) -> Operation[int]:
    """Delete every row expired at ``now``, batch by batch; return how many went.

    ``count`` is told each batch's deletions as they commit; ``stop``, once set, ends
    the cleanup between batches (so that closing a store need not wait for a backlog).
    ``batch`` replaces the plain delete of one batch (archiving and history retention
    run their own, :mod:`sauce_sql.history`), ``first_rows`` the first batch's size
    (default :data:`START_BATCH_ROWS`).

    Each batch is sized from the last one's rate so that it takes about the backend's
    ``batch_seconds``: row counts alone would hold the lock for very different times
    on a fast disk and a slow one, a small table and a huge one.
    """
    backend = backend_for(dialect_name)
    if batch is None:
        batch = _bounded_batch if backend.bounded_batches else _batch
    first = START_BATCH_ROWS if first_rows is None else first_rows
    rows, deleted, fruitless = max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, first)), 0, 0
    while True:
        started = time.perf_counter()
        done, last = yield from batch(statements, now, rows)
        elapsed = time.perf_counter() - started
        deleted += done
        if count is not None:
            count(done)
        # Deleting writes many pages to the log: have the store's thread fold them
        # into the database beside the writers and the next batch, rather than some
        # writer's commit or this loop.
        yield CHECKPOINT
        # Batches that keep deleting nothing while expired rows are seen (a trigger
        # cancelling deletes, say) would loop for ever: the next cleanup tries again.
        fruitless = fruitless + 1 if done == 0 else 0
        if last or fruitless >= MAX_FRUITLESS or (stop is not None and stop.is_set()):
            return deleted
        if backend.batch_pause:
            yield Pause(min(elapsed * backend.batch_pause, MAX_PAUSE))
        # At most double per step, so one lucky fast batch cannot make the next one huge.
        fitting = int(max(done, 1) * backend.batch_seconds / max(elapsed, 1e-6))
        rows = max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, 2 * rows, fitting))


def _batch(
    statements: CleanupStatements, now: datetime, rows: int
) -> Generator[Step, Result, tuple[int, bool]]:
    values = {"now": now, "batch": rows}
    _, count = yield Step(statements.delete_expired_batch, values, write=True, slow=True)
    if count == rows:
        return count, False
    # A short batch is not proof that the end was reached: rows it picked may have
    # been revived meanwhile, or deleted by another process's cleanup (which may
    # itself stop on a short batch). Only an empty look ends the cleanup.
    left, _ = yield Step(statements.expired_bound, {"now": now, "batch": 0})
    return count, not left


def _bounded_batch(
    statements: CleanupStatements, now: datetime, rows: int
) -> Generator[Step, Result, tuple[int, bool]]:
    # Where the batch ends is read first, beside the writers; the delete is then one
    # range of the index. A row revived in between expires after now, past the bound.
    found, _ = yield Step(statements.expired_bound, {"now": now, "batch": rows - 1})
    if not found:
        # Fewer than a batch left: one DELETE takes them all (writers are serialised,
        # and no row becomes expired as of a past moment).
        values = {"now": now, "batch": rows}
        _, count = yield Step(statements.delete_expired_batch, values, write=True, slow=True)
        return count, True
    bound_at, bound_id = found[0]
    values = {"bound_at": bound_at, "bound_id": bound_id}
    _, count = yield Step(statements.delete_expired_upto, values, write=True, slow=True)
    return count, False


class Cleaner:
    """A daemon thread that calls ``clean(stop)`` every ``interval`` seconds until stopped.

    A failing cleanup is logged and tried again at the next tick: a database outage
    must not end the thread.
    """

    def __init__(self, clean: Callable[[threading.Event], int], interval: float, name: str) -> None:
        self._clean = clean
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Wake the thread, ask it to end, and wait until it has."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _sleep(self) -> bool:
        """Wait one interval or until stopped; True when stopped.

        Waits in steps of at most a day: ``Event.wait`` refuses timeouts beyond
        ``threading.TIMEOUT_MAX``, and a huge interval is a valid way to say "rarely".
        """
        deadline = time.monotonic() + self._interval
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return self._stop.is_set()
            if self._stop.wait(min(left, _LONGEST_WAIT)):
                return True

    def _run(self) -> None:
        while not self._sleep():
            try:
                deleted = self._clean(self._stop)
            except Exception:
                logger.exception("cleanup failed; trying again in %s s", self._interval)
            else:
                logger.log(
                    logging.INFO if deleted else logging.DEBUG,
                    "cleanup deleted %d expired sessions",
                    deleted,
                )
