"""Runs an asyncio store's statements on SQLite, on the loop when they cannot wait.

A SQLite statement is a function call of microseconds, as long as it does not wait:
handing it to a thread costs several times the statement (aiosqlite's cost). So a
statement runs inline on the event loop when it cannot wait, and in a worker thread,
through the synchronous executor's write path, when it might:

- A read of a file database runs inline: in WAL mode readers never wait for writers.
- A write with ``durability="normal"`` runs inline on a connection of its own whose
  busy timeout is 0, if the executor's lock is free (no thread of the process is
  writing) and SQLite's write lock is free (no other process is). If either is taken
  it has changed nothing, and goes to a worker thread, where it waits in the process's
  line (:mod:`~sauce_sql.backends.sqlite.floor`) with the call's deadline.
- With ``durability="full"`` every commit is an fsync: writes go to the worker
  threads, which commit in groups (:mod:`~sauce_sql.backends.sqlite.group_commit`).
- An in-memory database's one connection is used inline when its lock is free.
- A cleanup batch holds the write lock for milliseconds: always a worker thread's.

The workers are a few threads per store, not one per call or per connection, and the
synchronous executor (its writer connection, floor, checkpoint thread) is the one a
synchronous store on the same file in the process shares.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Dialect

from sauce_sql.backends.base import ConnectionLost, Forks, Held, Result
from sauce_sql.backends.sqlite import forks, sharing
from sauce_sql.backends.sqlite.executor import SQLiteExecutor
from sauce_sql.errors import StoreUnavailable
from sauce_sql.prepared import Prepared

__all__ = ["AsyncSQLiteExecutor"]

T = TypeVar("T")

# SQLITE_BUSY and SQLITE_LOCKED (named in sqlite3 only from Python 3.11).
_BUSY = (5, 6)
#: Inline work (s) after which a call lets the loop run other tasks before returning.
YIELD_EVERY = 0.001


def _busy(exc: StoreUnavailable) -> bool:
    """Whether the statement failed only because the write lock was taken."""
    cause = exc.__cause__
    return isinstance(cause, sqlite3.OperationalError) and (
        getattr(cause, "sqlite_errorcode", None) in _BUSY
    )


class AsyncSQLiteExecutor:
    """Executes :class:`Prepared` statements for one asyncio store on SQLite."""

    def __init__(self, sync: SQLiteExecutor, *, durability: str) -> None:
        self._sync = sync
        self._memory = sync.memory
        # Writes that may wait: with durability="full" every one, so enough workers
        # for their commits to be shared.
        self._inline_writes = durability == "normal"
        workers = 2 if self._inline_writes else 8
        self._workers = ThreadPoolExecutor(workers, thread_name_prefix="sauce-sql-sqlite")
        self._inline: Held | None = None
        self._generation = Forks.generation
        # When the store last let the loop run other tasks (see _let_others_run).
        self._since = time.monotonic()

    @property
    def dialect(self) -> Dialect:
        """The SQLAlchemy dialect of the database."""
        return self._sync.dialect

    def others_present(self) -> bool:
        """Whether a store of another process uses the file (see lease.py)."""
        return self._sync.others_present()

    @property
    def sync(self) -> SQLiteExecutor:
        """The synchronous executor underneath (the one the process's stores share)."""
        return self._sync

    async def read(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that only reads."""
        if self._memory:
            result = self._memory_now(prepared, values)
            if result is None:
                return await self._off_loop(self._sync.read, prepared, values)
        else:
            result = self._sync.read(prepared, values)
        await self._let_others_run()
        return result

    async def write(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that writes; never retried, so never applied twice."""
        if self._memory:
            result = self._memory_now(prepared, values)
        elif self._inline_writes:
            result = self._write_now(prepared, values)
        else:
            result = None
        if result is None:
            return await self._off_loop(self._sync.write, prepared, values)
        await self._let_others_run()
        return result

    async def transaction(self, body: Callable[[Any], T]) -> T:
        """Run ``body(run)`` in one transaction on the write path, in a worker thread
        (see SQLiteExecutor.transaction)."""
        return await self._off_loop(self._sync.transaction, body)

    async def write_slow(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a write that may hold the write lock for milliseconds, off the loop."""
        return await self._off_loop(self._sync.write, prepared, values)

    def checkpoint_soon(self) -> None:
        """Have the checkpoint thread fold the log in soon."""
        self._sync.checkpoint_soon()

    async def close(self) -> None:
        """Close the inline connection, stop the workers, release the write path."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._workers.shutdown(wait=True)
        sync = self._sync
        with sync.lock:
            inline, self._inline = self._inline, None
            if inline is not None and self._generation == Forks.generation:
                sync.discard(inline)
        sharing.release(sync)

    # -- inline ---------------------------------------------------------------------

    def _memory_now(self, prepared: Prepared, values: Mapping[str, Any]) -> Result | None:
        """The statement run on the one in-memory connection, or None if a thread has it."""
        sync = self._sync
        if sync.generation != Forks.generation:
            sync.after_fork()
        parameters = prepared.parameters(values)
        if not sync.lock.acquire(blocking=False):
            return None
        forks.inside()
        try:
            return sync.run_on_writer(sync.writer_connection(), prepared, parameters)
        finally:
            forks.outside()
            sync.lock.release()

    def _write_now(self, prepared: Prepared, values: Mapping[str, Any]) -> Result | None:
        """The write run inline, or None if it would have had to wait (nothing done)."""
        sync = self._sync
        if self._generation != Forks.generation:
            # In a forked child: the inline connection is the parent's.
            self._generation, self._inline = Forks.generation, None
        if sync.generation != Forks.generation:
            sync.after_fork()
        if sync.log_work_due:
            return None  # it would start the log over (an fsync) or checkpoint it
        parameters = prepared.parameters(values)
        # The executor's lock: no thread of the process is writing, and no checkpoint
        # is waiting for the writers to pause.
        if not sync.lock.acquire(blocking=False):
            return None
        forks.inside()
        # Then the process's turn on the file, when other processes write to it too.
        turn = None
        try:
            turn = sync.try_turn()
            if turn is False:
                return None
            inline = self._inline
            if inline is None:
                inline = self._inline = self._open_inline()
            try:
                result = sync.execute(inline, prepared, parameters)
            except ConnectionLost:
                self._inline = None
                sync.discard(inline)
                raise
            except StoreUnavailable as exc:
                if _busy(exc):
                    return None
                raise
        finally:
            if turn:
                sync.give_turn()
            forks.outside()
            sync.lock.release()
        sync.wrote()
        return result

    def _open_inline(self) -> Held:
        """The inline writer's connection: it never waits for the write lock."""
        sync = self._sync
        held = sync.open()
        try:
            held.connection.execute("PRAGMA busy_timeout = 0")
            # Never a checkpoint on the loop: the store's thread, or the backstop of
            # the writer's connection in a worker thread (log_work_due), does them.
            held.connection.execute("PRAGMA wal_autocheckpoint = 0")
        except sync.error as exc:
            sync.discard(held)
            raise sync.unavailable(exc) from exc
        held.busy_ms = 0
        return held

    async def _let_others_run(self) -> None:
        """Yield to the loop once per :data:`YIELD_EVERY` of inline work.

        A call that ran inline returns without suspending, so a task calling the store
        in a loop would otherwise keep every other task waiting until it is done.
        """
        now = time.monotonic()
        if now - self._since > YIELD_EVERY:
            await asyncio.sleep(0)
            self._since = time.monotonic()

    async def _off_loop(self, call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._workers, call, *args)
        finally:
            self._since = time.monotonic()
