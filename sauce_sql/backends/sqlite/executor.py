"""Runs a store's statements on SQLite: a file in WAL mode, or one in-memory database.

SQLite allows one writer at a time, and its busy handler makes waiting writers sleep
and retry rather than queue. So the writers of one store share one held autocommit
connection and queue for it in Python: they take turns on it
(:mod:`~sauce_sql.backends.sqlite.floor`), or with ``durability="full"``, where each
commit is an fsync, commit in groups (:mod:`~sauce_sql.backends.sqlite.group_commit`).
A thread of the store's copies the write-ahead log into the database beside them
(:mod:`~sauce_sql.backends.sqlite.checkpoints`). Readers of a file database run beside
the writers (WAL) on connections of their own; an in-memory database is one
connection that readers and writers take turns on
(:mod:`~sauce_sql.backends.sqlite.connections`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine

from sauce_sql.backends.base import Forks, Raw, Result
from sauce_sql.backends.sqlite import forks, lease, turns
from sauce_sql.backends.sqlite.checkpoints import (
    BACKSTOP_FRAMES,
    CHECKPOINT_EVERY,
    Checkpointer,
    Outcome,
)
from sauce_sql.backends.sqlite.connections import SQLiteConnections
from sauce_sql.backends.sqlite.dialect import BUSY_TIMEOUT_MS
from sauce_sql.backends.sqlite.floor import FloorTimeout, WriteFloor
from sauce_sql.backends.sqlite.group_commit import GroupCommitter
from sauce_sql.errors import StoreUnavailable
from sauce_sql.prepared import Prepared

logger = logging.getLogger("sauce_sql.connections")

__all__ = ["Run", "SQLiteExecutor"]

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


def _log_work_due(outcome: Outcome) -> bool:
    """Whether the next write will do work on the log after this checkpoint: start it
    over (the checkpoint copied all of it), or checkpoint it itself (the backstop)."""
    if outcome is None:
        return False
    _, in_log, copied = outcome
    return 0 < in_log <= copied or in_log >= BACKSTOP_FRAMES


class SQLiteExecutor(SQLiteConnections):
    """Executes :class:`Prepared` statements for the stores on one SQLite database."""

    def __init__(self, engine: Engine, *, durability: str, describe: str) -> None:
        # An fsync per commit costs far more than waking a thread: share commits then.
        self._shared_commits = durability == "full"
        super().__init__(engine, durability=durability, describe=describe)
        # This process's turns on the file, among the processes writing to it.
        self._turns = None if self.memory else turns.for_file(engine.url.database or "")

    def fresh_state(self) -> None:
        super().fresh_state()
        self._group = GroupCommitter(
            self.writer_connection,
            self.run_on_writer,
            self.lock,
            bound=self.bound_busy_wait,
            locked=self.locked,
            unavailable=self.unavailable,
            error=self.error,
            turn=self.take_turn,
            give=self.give_turn,
        )
        self._floor = WriteFloor()
        self._writes = 0
        self._checkpointer: Checkpointer | None = None

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
                taken = self.take_turn(deadline)
                try:
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
                    if taken:
                        self.give_turn()
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
        outcome = _outcome(rows)
        if _log_work_due(outcome):
            self.log_work_due = True
        return outcome

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
                outcome = _outcome(rows)
                if _log_work_due(outcome):
                    self.log_work_due = True
        except StoreUnavailable:
            return None
        finally:
            forks.outside()
        return outcome

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
            self.close_connections()
        finally:
            forks.outside()

    # -- execution ------------------------------------------------------------------

    def _write_alone(self, prepared: Prepared, parameters: Any, deadline: float) -> Result:
        # One statement in autocommit: its own transaction, which takes the write lock
        # as it starts. The lock is for the reads of an in-memory database.
        forks.inside()
        try:
            with self.lock:
                connection = self.writer_connection()
                # Alone on the file (the common case) this reads two attributes.
                file_turns = self._turns
                taken = (
                    file_turns is not None
                    and (file_turns.present or time.monotonic() >= file_turns.recheck_at)
                    and self.take_turn(deadline)
                )
                try:
                    self.bound_busy_wait(deadline)
                    return self.run_on_writer(connection, prepared, parameters)
                finally:
                    if taken:
                        self.give_turn()
        finally:
            forks.outside()

    def take_turn(self, deadline: float) -> bool:
        """Take this process's turn among the processes writing to the file, if
        others are there (turns.py); True if taken, to give back. The writer's lock
        is held; past ``deadline`` the call's locked error."""
        file_turns = self._turns
        if file_turns is None:
            return False
        try:
            return file_turns.take(deadline)
        except turns.TurnTimeout:
            raise self.locked() from None

    def try_turn(self) -> bool | None:
        """The turn without waiting: True if taken, None if not needed, False if it
        is another process's now."""
        file_turns = self._turns
        return None if file_turns is None else file_turns.try_take()

    def give_turn(self) -> None:
        """Give back a turn :meth:`take_turn` or :meth:`try_turn` took."""
        assert self._turns is not None
        self._turns.give()

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
