"""Runs a store's statements on SQLite: a file in WAL mode, or one in-memory database.

SQLite allows one writer at a time, and its busy handler makes waiting writers sleep
and retry rather than queue. So the writers of one store share one held autocommit
connection and queue for it in Python: they take turns on it
(:mod:`~sauce_sql.backends.sqlite.floor`), or with ``durability="full"``, where each
commit is an fsync, commit in groups (:mod:`~sauce_sql.backends.sqlite.group_commit`).
A thread of the store's copies the write-ahead log into the database beside them
(:mod:`~sauce_sql.backends.sqlite.checkpoints`). Readers of a file database run beside
the writers (WAL) on connections of their own, kept on a free list (a plain list:
``append`` and ``pop`` are atomic), so the store holds about as many as there are
threads calling it at once. An in-memory database is one connection that readers and
writers take turns on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from sauce_sql.backends.base import ConnectionLost, Forks, Held, HeldConnections, Raw, Result
from sauce_sql.backends.sqlite import forks, lease
from sauce_sql.backends.sqlite.checkpoints import (
    BACKSTOP_FRAMES,
    CHECKPOINT_EVERY,
    LOG_SIZE_LIMIT,
    Checkpointer,
    Outcome,
)
from sauce_sql.backends.sqlite.floor import FloorTimeout, WriteFloor
from sauce_sql.backends.sqlite.group_commit import GroupCommitter
from sauce_sql.engine import BUSY_TIMEOUT_MS, configure_sqlite, is_memory
from sauce_sql.errors import StoreUnavailable
from sauce_sql.history_sql import SQLITE_MASK_FUNCTION
from sauce_sql.prepared import Prepared
from sauce_sql.privacy import mask_ip

logger = logging.getLogger("sauce_sql.connections")

__all__ = ["MAX_IDLE", "Run", "SQLiteExecutor"]

#: Idle reader connections kept beyond this many are closed when given back.
MAX_IDLE = 8
#: How far a connection's busy timeout may be from what is left of a call's time
#: before it is set again (ms).
_BUSY_SLACK_MS = 20

_CHECKPOINT: Any = Raw("PRAGMA wal_checkpoint(PASSIVE)")
_BEGIN: Any = Raw("BEGIN IMMEDIATE", returns_rows=False)
_COMMIT: Any = Raw("COMMIT", returns_rows=False)

T = TypeVar("T")
Run = Callable[[Prepared, Mapping[str, Any]], Result]
"""Runs one statement inside :meth:`SQLiteExecutor.transaction`; returns its result."""


def _outcome(rows: list[Sequence[Any]]) -> Outcome:
    """What ``PRAGMA wal_checkpoint`` returned, as ints."""
    busy, in_log, copied = rows[0]
    return int(busy), int(in_log), int(copied)


class SQLiteExecutor(HeldConnections):
    """Executes :class:`Prepared` statements for the stores on one SQLite database."""

    def __init__(self, engine: Engine, *, durability: str, describe: str) -> None:
        self._durability = durability
        # An fsync per commit costs far more than waking a thread: share commits then.
        self._shared_commits = durability == "full"
        self._memory = is_memory(engine.url)
        super().__init__(engine, describe=describe)

    def fresh_state(self) -> None:
        super().fresh_state()
        self._idle: list[Held] = []
        self._writer: Held | None = None
        self._memory_proxy: PoolProxiedConnection | None = None
        self._memory_isolation: str | None = ""
        self.lock = threading.Lock()
        self._group = GroupCommitter(
            self.writer_connection,
            self.run_on_writer,
            self.lock,
            bound=self.bound_busy_wait,
            locked=self.locked,
            unavailable=self.unavailable,
            error=self.error,
        )
        self._floor = WriteFloor()
        self._writes = 0
        self._checkpointer: Checkpointer | None = None

    def after_fork(self) -> None:
        if self._memory_proxy is not None:
            self._inherited.append(self._memory_proxy)
        super().after_fork()

    @property
    def memory(self) -> bool:
        """Whether this is an in-memory database (one connection, no log)."""
        return self._memory

    @property
    def database(self) -> str | None:
        """The database file's path (None in memory)."""
        return None if self._memory else self.engine.url.database

    def others_present(self) -> bool:
        """Whether a store of another process uses the file (see lease.py)."""
        database = self.database
        return database is not None and lease.others_present(database)

    @property
    def group_commit(self) -> GroupCommitter:
        """The write queue of ``durability="full"`` (its counters tell how well writes
        were grouped)."""
        return self._group

    @property
    def floor(self) -> WriteFloor:
        """The write floor of ``durability="normal"`` (its counter tells how often it
        passed between threads)."""
        return self._floor

    # -- the executor's surface -----------------------------------------------------

    def write(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that writes; never retried, so never applied twice."""
        if self.generation != Forks.generation:
            self.after_fork()
        parameters = prepared.parameters(values)
        # One deadline for the whole call: its wait in the process's line and its
        # wait for another process's write lock together.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        result: Result
        if self._shared_commits:
            result = self._group.write(prepared, parameters, deadline)
        else:
            try:
                result = self._floor.run(
                    self._write_alone, prepared, parameters, deadline, deadline=deadline
                )
            except FloorTimeout:
                raise self.locked() from None
        self.wrote()
        return result

    def transaction(self, body: Callable[[Run], T]) -> T:
        """Run ``body(run)`` in one transaction on the write path; return its result.

        ``body`` runs statements with ``run(prepared, values)``; they are committed
        together when it returns, and rolled back if it (or any of them) raises, so a
        crash at any moment leaves all or none of them. Like a write, the transaction
        waits its turn on the floor (or, with ``durability="full"``, for the writer
        between shared commits), within one deadline, and is never retried.
        """
        if self.generation != Forks.generation:
            self.after_fork()
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        result: T
        if self._shared_commits:
            # The group committer's leader commits holding the same lock.
            result = self._transaction_alone(body, deadline)
        else:
            try:
                result = self._floor.run(self._transaction_alone, body, deadline, deadline=deadline)
            except FloorTimeout:
                raise self.locked() from None
        self.wrote()
        return result

    def _transaction_alone(self, body: Callable[[Run], T], deadline: float) -> T:
        forks.inside()
        try:
            with self.lock:
                connection = self.writer_connection()
                self.bound_busy_wait(deadline)

                def run(prepared: Prepared, values: Mapping[str, Any]) -> Result:
                    return self.run_on_writer(connection, prepared, prepared.parameters(values))

                self.run_on_writer(connection, _BEGIN, ())
                try:
                    result = body(run)
                    self.run_on_writer(connection, _COMMIT, ())
                except BaseException:
                    if connection.in_transaction:
                        with contextlib.suppress(self.error):
                            connection.rollback()
                    raise
                return result
        finally:
            forks.outside()

    def wrote(self) -> None:
        """Count a committed write; every so many, have the log folded in."""
        # Not locked: a lost count only moves the next checkpoint a little.
        self._writes += 1
        if not self._writes % CHECKPOINT_EVERY:
            self.checkpoint_soon()

    def read(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that only reads."""
        if self.generation != Forks.generation:
            self.after_fork()
        parameters = prepared.parameters(values)
        forks.inside()
        try:
            if self._memory:
                with self.lock:
                    return self.run_on_writer(self.writer_connection(), prepared, parameters)
            return self.run_on_reader(prepared, parameters)
        finally:
            forks.outside()

    def checkpoint(self) -> Outcome:
        """Copy a file's write-ahead log into the database, beside the writers.

        A PASSIVE checkpoint from a reader connection takes no write lock, so writers
        go on meanwhile (see :mod:`~sauce_sql.backends.sqlite.checkpoints`). Best
        effort: a busy or failed checkpoint returns what SQLite said or None, and is
        simply tried again later.
        """
        if self._memory:
            return None
        if self.generation != Forks.generation:
            self.after_fork()
        forks.inside()
        try:
            rows, _ = self.run_on_reader(_CHECKPOINT, ())
        except StoreUnavailable:
            return None
        finally:
            forks.outside()
        return _outcome(rows)

    def checkpoint_soon(self) -> None:
        """Have the store's thread checkpoint a file soon, without waiting for it.

        Called after writes have committed, so it raises nothing: if the thread cannot
        be started, each connection's own automatic checkpoint keeps the log bounded.
        """
        if self._memory:
            return
        if self.generation != Forks.generation:
            self.after_fork()
        checkpointer = self._checkpointer
        if checkpointer is None:
            with self.lock:
                if self._checkpointer is None and not self.closed:
                    try:
                        self._checkpointer = Checkpointer(
                            self.checkpoint, self._checkpoint_paused, name="sauce-sql-checkpoint"
                        )
                    except RuntimeError:  # no new thread (at interpreter exit, say)
                        logger.warning("no checkpoint thread; SQLite checkpoints alone")
                checkpointer = self._checkpointer
        if checkpointer is not None:
            checkpointer.wake()

    def _checkpoint_paused(self) -> Outcome:
        """A checkpoint on the writer's own connection, so with the writers waiting
        (and no connection to open meanwhile, unless there was no write yet)."""
        forks.inside()
        try:
            with self.lock:
                rows, _ = self.run_on_writer(self.writer_connection(), _CHECKPOINT, ())
        except StoreUnavailable:
            return None
        finally:
            forks.outside()
        return _outcome(rows)

    def close(self) -> None:
        """Close the connections the executor holds; ones in use close when given back."""
        self.closed = True
        if self.generation != Forks.generation:
            # In a forked child: everything held is the parent's.
            self.after_fork()
            return
        with self.lock:
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
        forks.inside()
        try:
            with self.lock:
                writer, self._writer = self._writer, None
                if writer is not None:
                    self.discard(writer)
                proxy, self._memory_proxy = self._memory_proxy, None
                if proxy is not None:
                    # The in-memory database's one connection belongs to the engine.
                    dbapi: Any = proxy.dbapi_connection
                    if dbapi is not None:
                        dbapi.isolation_level = self._memory_isolation
                    proxy.close()
            self._drain_idle()
        finally:
            forks.outside()

    # -- connections ----------------------------------------------------------------

    def open(self) -> Held:
        """A new connection of the store's own, set up for SQLite."""
        proxy = self.raw_connection()
        try:
            if self._memory:
                # The one connection of the in-memory database: keep it checked out.
                self._memory_proxy = proxy
                dbapi: Any = proxy.dbapi_connection
                self._memory_isolation = dbapi.isolation_level
            else:
                proxy.detach()
                dbapi = proxy.dbapi_connection
            configure_sqlite(dbapi, durability=self._durability, memory=self._memory)
            # Archiving masks IPv6 addresses with it (history_sql).
            dbapi.create_function(SQLITE_MASK_FUNCTION, 1, mask_ip, deterministic=True)
            if not self._memory:
                # The store's thread checkpoints (checkpoints.py); the connection's own
                # checkpoint only backs it up.
                dbapi.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_FRAMES}")
                # When the log starts over, its file shrinks back to this size instead
                # of keeping the largest size it ever had.
                dbapi.execute(f"PRAGMA journal_size_limit = {LOG_SIZE_LIMIT}")
            # Autocommit: a lone statement is its own transaction, which takes the write
            # lock as it starts, so no deferred-transaction upgrade can fail with
            # SQLITE_BUSY; groups say BEGIN IMMEDIATE themselves.
            dbapi.isolation_level = None
            held = Held(dbapi, self.epoch)
        except self.error as exc:
            proxy.invalidate(exc)
            raise self.unavailable(exc) from exc
        held.busy_ms = BUSY_TIMEOUT_MS
        self.held.add(held)
        return held

    def owns_connection(self, held: Held) -> bool:
        return held.connection is not getattr(self._memory_proxy, "dbapi_connection", None)

    def writer_connection(self) -> Any:
        """The writer's DBAPI connection (the only one, in memory); the lock is held."""
        if self._writer is None:
            self._writer = self.open()
        return self._writer.connection

    # -- execution ------------------------------------------------------------------

    def _write_alone(self, prepared: Prepared, parameters: Any, deadline: float) -> Result:
        # One statement in autocommit: its own transaction, which takes the write lock
        # as it starts. The lock is for the reads of an in-memory database.
        forks.inside()
        try:
            with self.lock:
                connection = self.writer_connection()
                self.bound_busy_wait(deadline)
                return self.run_on_writer(connection, prepared, parameters)
        finally:
            forks.outside()

    def bound_busy_wait(self, deadline: float) -> None:
        """Let the writer's connection wait for another process's lock only until
        ``deadline``; the writer's lock is held.

        SQLite's busy timeout is a property of the connection, so it is set again only
        when what is left of the call's time differs from it by more than a little:
        a call that did not wait in line (the common case) sends no PRAGMA.
        """
        writer = self._writer
        assert writer is not None
        left = int((deadline - time.monotonic()) * 1000)
        if left <= 0:
            raise self.locked()
        if abs(writer.busy_ms - left) > _BUSY_SLACK_MS:
            try:
                writer.connection.execute(f"PRAGMA busy_timeout = {left}")
            except self.error as exc:
                raise self.unavailable(exc) from exc
            writer.busy_ms = left

    def locked(self) -> StoreUnavailable:
        """The error of a write that waited its whole time for the write lock."""
        return StoreUnavailable(
            f"database {self.describe} is unavailable: database is locked (the write waited "
            f"{BUSY_TIMEOUT_MS / 1000:.0f} s for the write lock)"
        )

    def run_on_writer(self, connection: Any, prepared: Prepared | Raw, parameters: Any) -> Result:
        """Run a statement on the writer's connection; the lock is held."""
        writer = self._writer
        assert writer is not None
        try:
            return self.execute(writer, prepared, parameters)
        except ConnectionLost:
            self._writer = None
            self.discard(writer)
            raise

    def run_on_reader(self, prepared: Prepared | Raw, parameters: Any) -> Result:
        """Run a statement on an idle reader connection, or a new one."""
        while True:
            try:
                held = self._idle.pop()
            except IndexError:
                held = self.open()
                break
            if held.epoch == self.epoch:
                break
            self.discard(held)
        try:
            result = self.execute(held, prepared, parameters)
        except ConnectionLost:
            self.epoch += 1
            self.discard(held)
            raise
        except BaseException:
            self._give_back(held)
            raise
        self._give_back(held)
        return result

    def _drain_idle(self) -> None:
        while self._idle:
            try:
                held = self._idle.pop()
            except IndexError:  # another thread took the last one
                break
            self.discard(held)

    def _give_back(self, held: Held) -> None:
        if self.closed or held.epoch < self.epoch or len(self._idle) >= MAX_IDLE:
            self.discard(held)
            return
        self._idle.append(held)
        if self.closed:
            # close() ran while this call was out, and may have drained the list first.
            self._drain_idle()
