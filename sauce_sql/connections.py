"""Runs prepared statements on the store's connections; the one error boundary.

SQLite allows one writer at a time, and its busy handler makes waiting writers sleep
and retry rather than queue. So the writers of one store share one held autocommit
connection and queue for it in Python: they take turns on it
(:mod:`sauce_sql.floor`), or with ``durability="full"``, where each commit is an
fsync, commit in groups (:mod:`sauce_sql.group_commit`). A thread of the store's
copies the write-ahead log into the database beside them
(:mod:`sauce_sql.checkpoints`). Readers of a file database run beside the writers
(WAL) on connections of their own, and an in-memory database is one connection that
readers and writers take turns on.
PostgreSQL runs each call on a held connection in autocommit: one statement, one round
trip, no separate BEGIN and COMMIT. A store holds at most ``max_connections`` of them,
lent longest waiter first (:mod:`sauce_sql.budget`), and each call has one deadline,
kept by the store's watchdog thread (:mod:`sauce_sql.watchdog`).

The store holds its connections itself rather than checking one out of the engine's
pool per call: a checkout costs as much as a SQLite read. It takes them from the
engine's pool once and detaches them, so the engine's ``connect`` listeners still run
and an application's pool is not drained. Idle ones wait on a free list (a plain
list: ``append`` and ``pop`` are atomic; for PostgreSQL, the budget's), so the store
holds about as many as there are threads calling it at once. The pool's own options
(``pool_pre_ping``, ``pool_recycle``) do not apply to them: a dead connection shows
itself by failing a call, which is then retried once if it only read, and it is
replaced together with every connection opened before it.

Every driver error leaves through :meth:`Executor._unavailable` as
:class:`StoreUnavailable` with the cause chained, but for a value the database's
encoding cannot hold, which is the caller's :class:`InvalidInput`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from sauce_sql import forks
from sauce_sql.budget import BudgetSpent, ConnectionBudget
from sauce_sql.checkpoints import (
    BACKSTOP_FRAMES,
    CHECKPOINT_EVERY,
    LOG_SIZE_LIMIT,
    Checkpointer,
    Outcome,
)
from sauce_sql.engine import BUSY_TIMEOUT_MS, configure_sqlite, is_memory, prepare_threshold
from sauce_sql.errors import StoreUnavailable, unavailable, unstorable
from sauce_sql.floor import FloorTimeout, WriteFloor
from sauce_sql.group_commit import GroupCommitter
from sauce_sql.history_sql import SQLITE_MASK_FUNCTION
from sauce_sql.prepared import Prepared
from sauce_sql.privacy import mask_ip
from sauce_sql.watchdog import Watchdog

logger = logging.getLogger("sauce_sql.connections")

__all__ = ["MAX_IDLE", "ConnectionLost", "Executor", "Result", "Run"]

Result = tuple[list[Sequence[Any]], int]
"""The rows a statement returned and the number of rows it changed."""

#: Idle SQLite reader connections kept beyond this many are closed when given back.
MAX_IDLE = 8
#: How long closing a connection interrupted mid-call waits for the server to take
#: the cancel request (the server answers at once; an unreachable one never does).
CANCEL_WAIT = 1.0
#: How far a SQLite connection's busy timeout may be from what is left of a call's time
#: before it is set again (ms).
_BUSY_SLACK_MS = 20


class _Forks:
    """Counts forks, so an executor notices it is in a child for the cost of a compare."""

    generation = 0

    @classmethod
    def bump(cls) -> None:
        cls.generation += 1


os.register_at_fork(after_in_child=_Forks.bump)


class _Raw:
    """A fixed SQL text run as it is, in the shape of a :class:`Prepared`."""

    def __init__(self, sql: str, *, returns_rows: bool = True) -> None:
        self.sql = sql
        self.returns_rows = returns_rows


_CHECKPOINT: Any = _Raw("PRAGMA wal_checkpoint(PASSIVE)")
_SERVER_NOW: Any = _Raw("SELECT clock_timestamp()")
_BEGIN: Any = _Raw("BEGIN IMMEDIATE", returns_rows=False)
_COMMIT: Any = _Raw("COMMIT", returns_rows=False)

T = TypeVar("T")
Run = Callable[[Prepared, Mapping[str, Any]], "Result"]
"""Runs one statement inside :meth:`Executor.transaction` and returns its result."""


def _outcome(rows: list[Sequence[Any]]) -> Outcome:
    """What ``PRAGMA wal_checkpoint`` returned, as ints."""
    busy, in_log, copied = rows[0]
    return int(busy), int(in_log), int(copied)


class ConnectionLost(StoreUnavailable):
    """The connection died under a call; it has been closed and will be replaced."""


class _Held:
    """A DBAPI connection the executor holds, with its one reused cursor."""

    __slots__ = ("busy_ms", "connection", "cursor", "epoch")

    def __init__(self, connection: Any, epoch: int) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        # SQLite: the busy timeout the connection has now (configure_sqlite's).
        self.busy_ms = BUSY_TIMEOUT_MS
        # Connections older than the last lost one are presumed dead too (a restarted
        # server ends them all), and are dropped when given back.
        self.epoch = epoch


class _ServerHeld(_Held):
    """A PostgreSQL connection, with what the watchdog reads (see
    :class:`sauce_sql.watchdog.Watched`)."""

    __slots__ = ("deadline", "fd", "timed_out")

    def __init__(self, connection: Any, epoch: int) -> None:
        super().__init__(connection, epoch)
        self.deadline = 0.0
        self.timed_out = False
        # The watchdog's own handle on the socket: it stays this socket's, whatever
        # becomes of the driver's descriptor, until the executor closes it.
        self.fd = os.dup(connection.fileno())


class Executor:
    """Executes :class:`Prepared` statements for one store."""

    def __init__(
        self,
        engine: Engine,
        *,
        durability: str,
        describe: str,
        timeout: float = 10.0,
        max_connections: int = 10,
        max_idle_connections: int | None = None,
    ) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._error: type[Any] = engine.dialect.loaded_dbapi.Error
        self._describe = describe
        self._durability = durability
        # An fsync per commit costs far more than waking a thread: share commits then.
        self._shared_commits = durability == "full"
        self._sqlite = engine.dialect.name == "sqlite"
        self._memory = self._sqlite and is_memory(engine.url)
        self._prepare_threshold = None if self._sqlite else prepare_threshold(engine.url)
        self._timeout = timeout
        self._max_connections = max_connections
        self._keep_idle = max_connections if max_idle_connections is None else max_idle_connections
        self._closed = False
        self._fresh_state()
        # Connections inherited over fork(): the parent still owns them, so the child
        # neither uses nor closes them (closing a PostgreSQL one would end the parent's
        # session); it only keeps them from being garbage collected.
        self._inherited: list[Any] = []

    def _fresh_state(self) -> None:
        self._generation = _Forks.generation
        self._epoch = 0
        self._idle: list[_Held] = []
        self._held: set[_Held] = set()
        self._writer: _Held | None = None
        self._memory_proxy: PoolProxiedConnection | None = None
        self._memory_isolation: str | None = ""
        self._lock = threading.Lock()
        # Held connections are detached from the engine's pool: without a budget, a
        # burst of threads would open as many server sessions.
        self._budget: ConnectionBudget[_ServerHeld] = ConnectionBudget(
            self._max_connections, self._keep_idle
        )
        self._watchdog = Watchdog(timeout=self._timeout, name="sauce-sql-watchdog")
        self._group = GroupCommitter(
            self._writer_connection,
            self._run_on_writer,
            self._lock,
            bound=self._bound_busy_wait,
            locked=self._locked,
            unavailable=self._unavailable,
            error=self._error,
        )
        self._floor = WriteFloor()
        self._writes = 0
        self._checkpointer: Checkpointer | None = None

    # -- public surface -------------------------------------------------------------

    @property
    def group_commit(self) -> GroupCommitter:
        """The SQLite write queue of ``durability="full"`` (its counters tell how well
        writes were grouped)."""
        return self._group

    @property
    def floor(self) -> WriteFloor:
        """The SQLite write floor of ``durability="normal"`` (its counter tells how
        often it passed between threads)."""
        return self._floor

    def write(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that writes; never retried, so never applied twice."""
        if self._generation != _Forks.generation:
            self._after_fork()
        parameters = prepared.parameters(values)
        if self._sqlite:
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
                    raise self._locked() from None
            # Not locked: a lost count only moves the next checkpoint a little.
            self._writes += 1
            if not self._writes % CHECKPOINT_EVERY:
                self.checkpoint_soon()
            return result
        return self._run_held(prepared, parameters)

    def transaction(self, body: Callable[[Run], T]) -> T:
        """Run ``body(run)`` in one SQLite transaction on the write path; return its result.

        ``body`` runs statements with ``run(prepared, values)``; they are committed
        together when it returns, and rolled back if it (or any of them) raises, so a
        crash at any moment leaves all or none of them. Like a write, the transaction
        waits its turn on the floor (or, with ``durability="full"``, for the writer
        between shared commits) and is never retried. SQLite only: PostgreSQL runs
        each multi-statement operation as one statement.
        """
        if not self._sqlite:
            raise ValueError(f"transaction() is for SQLite, not {self.dialect.name!r}")
        if self._generation != _Forks.generation:
            self._after_fork()
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        result: T
        if self._shared_commits:
            # The group committer's leader commits holding the same lock.
            result = self._transaction_alone(body, deadline)
        else:
            try:
                result = self._floor.run(self._transaction_alone, body, deadline, deadline=deadline)
            except FloorTimeout:
                raise self._locked() from None
        self._writes += 1
        if not self._writes % CHECKPOINT_EVERY:
            self.checkpoint_soon()
        return result

    def _transaction_alone(self, body: Callable[[Run], T], deadline: float) -> T:
        forks.inside()
        try:
            with self._lock:
                connection = self._writer_connection()
                self._bound_busy_wait(deadline)

                def run(prepared: Prepared, values: Mapping[str, Any]) -> Result:
                    return self._run_on_writer(connection, prepared, prepared.parameters(values))

                self._run_on_writer(connection, _BEGIN, ())
                try:
                    result = body(run)
                    self._run_on_writer(connection, _COMMIT, ())
                except BaseException:
                    if connection.in_transaction:
                        with contextlib.suppress(self._error):
                            connection.rollback()
                    raise
                return result
        finally:
            forks.outside()

    def read(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that only reads; retried once on a fresh connection if the
        connection it got turns out to be dead (a restarted server, say)."""
        if self._generation != _Forks.generation:
            self._after_fork()
        parameters = prepared.parameters(values)
        if self._memory:
            forks.inside()
            try:
                with self._lock:
                    return self._run_on_writer(self._writer_connection(), prepared, parameters)
            finally:
                forks.outside()
        if self._sqlite:
            forks.inside()
            try:
                return self._run_held(prepared, parameters)
            finally:
                forks.outside()
        try:
            return self._run_held(prepared, parameters)
        except ConnectionLost:
            return self._run_held(prepared, parameters)

    def server_now(self) -> datetime:
        """The database server's clock (a server database only); retried once on a
        fresh connection, like any read."""
        if self._generation != _Forks.generation:
            self._after_fork()
        try:
            rows, _ = self._run_held(_SERVER_NOW, ())
        except ConnectionLost:
            rows, _ = self._run_held(_SERVER_NOW, ())
        now: datetime = rows[0][0]
        return now

    def checkpoint(self) -> Outcome:
        """Copy a SQLite file's write-ahead log into the database, beside the writers.

        A PASSIVE checkpoint from a reader connection takes no write lock, so writers
        go on meanwhile (see :mod:`sauce_sql.checkpoints`). Best effort: a busy or
        failed checkpoint returns what SQLite said or None, and is simply tried
        again later.
        """
        if not self._sqlite or self._memory:
            return None
        if self._generation != _Forks.generation:
            self._after_fork()
        forks.inside()
        try:
            rows, _ = self._run_held(_CHECKPOINT, ())
        except StoreUnavailable:
            return None
        finally:
            forks.outside()
        return _outcome(rows)

    def checkpoint_soon(self) -> None:
        """Have the store's thread checkpoint a SQLite file soon, without waiting for it.

        Called after writes have committed, so it raises nothing: if the thread cannot
        be started, each connection's own automatic checkpoint keeps the log bounded.
        """
        if not self._sqlite or self._memory:
            return
        if self._generation != _Forks.generation:
            self._after_fork()
        checkpointer = self._checkpointer
        if checkpointer is None:
            with self._lock:
                if self._checkpointer is None and not self._closed:
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
            with self._lock:
                rows, _ = self._run_on_writer(self._writer_connection(), _CHECKPOINT, ())
        except StoreUnavailable:
            return None
        finally:
            forks.outside()
        return _outcome(rows)

    def close(self) -> None:
        """Close the connections the executor holds; ones in use close when given back."""
        self._closed = True
        if self._generation != _Forks.generation:
            # In a forked child: everything held is the parent's.
            self._after_fork()
            return
        with self._lock:
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop()
        if self._sqlite:
            forks.inside()
            try:
                self._close_connections()
            finally:
                forks.outside()
        else:
            self._close_connections()

    def _close_connections(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                self._discard(writer)
            proxy, self._memory_proxy = self._memory_proxy, None
            if proxy is not None:
                # The in-memory database's one connection belongs to the engine.
                dbapi: Any = proxy.dbapi_connection
                if dbapi is not None:
                    dbapi.isolation_level = self._memory_isolation
                proxy.close()
        self._drain_idle()
        if not self._sqlite:
            self._close_server()

    # -- connections ----------------------------------------------------------------

    def _after_fork(self) -> None:
        # The engine's pool still holds the parent's connections (the migration's, say):
        # drop them unclosed, or parent and child would share one socket or file handle.
        self.engine.dispose(close=False)
        self._inherited.extend(held.connection for held in self._held)
        if self._memory_proxy is not None:
            self._inherited.append(self._memory_proxy)
        # Locks held by another thread at fork time would stay held in the child.
        self._fresh_state()

    def _open(self, deadline: float = 0.0) -> _Held:
        """A new connection of the store's own, set up for its backend (on a server,
        by ``deadline``)."""
        if self._closed:
            raise StoreUnavailable("the store's connections are closed")
        try:
            proxy = self.engine.raw_connection()
        except (SQLAlchemyError, self._error) as exc:
            raise self._unavailable(exc) from exc
        try:
            if self._memory:
                # The one connection of the in-memory database: keep it checked out.
                self._memory_proxy = proxy
                dbapi: Any = proxy.dbapi_connection
                self._memory_isolation = dbapi.isolation_level
            else:
                proxy.detach()
                dbapi = proxy.dbapi_connection
            if self._sqlite:
                configure_sqlite(dbapi, durability=self._durability, memory=self._memory)
                # Archiving masks IPv6 addresses with it (history_statements).
                dbapi.create_function(SQLITE_MASK_FUNCTION, 1, mask_ip, deterministic=True)
                if not self._memory:
                    # The store's thread checkpoints (sauce_sql.checkpoints); the
                    # connection's own checkpoint only backs it up.
                    dbapi.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_FRAMES}")
                    # When the log starts over, its file shrinks back to this size
                    # instead of keeping the largest size it ever had.
                    dbapi.execute(f"PRAGMA journal_size_limit = {LOG_SIZE_LIMIT}")
                # Autocommit: a lone statement is its own transaction, which takes the
                # write lock as it starts, so no deferred-transaction upgrade can fail
                # with SQLITE_BUSY; groups say BEGIN IMMEDIATE themselves.
                dbapi.isolation_level = None
            else:
                dbapi.autocommit = True
                # Whatever the engine says: see engine.prepare_threshold.
                dbapi.prepare_threshold = self._prepare_threshold
                return self._set_up_server(dbapi, deadline)
            held = _Held(dbapi, self._epoch)
        except self._error as exc:
            proxy.invalidate(exc)
            raise self._unavailable(exc) from exc
        self._held.add(held)
        return held

    def _discard(self, held: _Held) -> None:
        self._held.discard(held)
        # A failing close means the connection is broken already; it is gone either way.
        with contextlib.suppress(self._error):
            held.cursor.close()
        if held.connection is not getattr(self._memory_proxy, "dbapi_connection", None):
            with contextlib.suppress(self._error):
                held.connection.close()

    def _writer_connection(self) -> Any:
        """The writer's DBAPI connection (the only one, in memory); the lock is held."""
        if self._writer is None:
            self._writer = self._open()
        return self._writer.connection

    # -- execution ------------------------------------------------------------------

    def _write_alone(self, prepared: Prepared, parameters: Any, deadline: float) -> Result:
        # One statement in autocommit: its own transaction, which takes the write lock
        # as it starts. The lock is for the reads of an in-memory database.
        forks.inside()
        try:
            with self._lock:
                connection = self._writer_connection()
                self._bound_busy_wait(deadline)
                return self._run_on_writer(connection, prepared, parameters)
        finally:
            forks.outside()

    def _bound_busy_wait(self, deadline: float) -> None:
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
            raise self._locked()
        if abs(writer.busy_ms - left) > _BUSY_SLACK_MS:
            try:
                writer.connection.execute(f"PRAGMA busy_timeout = {left}")
            except self._error as exc:
                raise self._unavailable(exc) from exc
            writer.busy_ms = left

    def _locked(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"database {self._describe} is unavailable: database is locked (the write waited "
            f"{BUSY_TIMEOUT_MS / 1000:.0f} s for the write lock)"
        )

    def _run_on_writer(self, connection: Any, prepared: Prepared, parameters: Any) -> Result:
        writer = self._writer
        assert writer is not None
        try:
            return self._execute(writer, prepared, parameters)
        except ConnectionLost:
            self._writer = None
            self._discard(writer)
            raise

    def _run_held(self, prepared: Prepared, parameters: Any) -> Result:
        if self._sqlite:
            return self._run_idle_or_new(prepared, parameters)
        return self._run_on_server(prepared, parameters)

    def _run_idle_or_new(self, prepared: Prepared, parameters: Any) -> Result:
        while True:
            try:
                held = self._idle.pop()
            except IndexError:
                held = self._open()
                break
            if held.epoch == self._epoch:
                break
            self._discard(held)
        try:
            result = self._execute(held, prepared, parameters)
        except ConnectionLost:
            self._epoch += 1
            self._discard(held)
            raise
        except BaseException:
            self._give_back(held)
            raise
        self._give_back(held)
        return result

    def _drain_idle(self) -> None:
        while self._idle:
            with contextlib.suppress(IndexError):  # another thread took the last one
                self._discard(self._idle.pop())

    def _give_back(self, held: _Held) -> None:
        if self._closed or held.epoch < self._epoch or len(self._idle) >= MAX_IDLE:
            self._discard(held)
            return
        self._idle.append(held)
        if self._closed:
            # close() ran while this call was out, and may have drained the list first.
            self._drain_idle()

    def _execute(self, held: _Held, prepared: Prepared, parameters: Any) -> Result:
        cursor = held.cursor
        try:
            cursor.execute(prepared.sql, parameters)
            rows = cursor.fetchall() if prepared.returns_rows else []
        except UnicodeEncodeError as exc:  # psycopg, for a database that is not UTF8
            raise (unstorable(exc) or self._unavailable(exc)) from exc
        except self._error as exc:
            if self.dialect.is_disconnect(exc, held.connection, cursor):
                raise ConnectionLost(*self._unavailable(exc).args) from exc
            raise (unstorable(exc) or self._unavailable(exc)) from exc
        return rows, cursor.rowcount

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return unavailable(f"database {self._describe} is unavailable", exc)

    # -- PostgreSQL -----------------------------------------------------------------

    def _run_on_server(self, prepared: Prepared, parameters: Any) -> Result:
        """One call on a server connection, which the watchdog ends at its deadline."""
        began = time.monotonic()
        deadline = began + self._timeout
        held = self._server_connection(began, deadline)
        held.deadline = deadline
        try:
            result = self._execute(held, prepared, parameters)
        except BaseException as exc:
            held.deadline = 0.0
            self._after_server_failure(held, exc)
            raise
        held.deadline = 0.0
        self._server_give_back(held)
        return result

    def _server_connection(self, began: float, deadline: float) -> _ServerHeld:
        """A connection of the budget's, waiting in line for one until ``deadline``."""
        try:
            held = self._budget.take(deadline - began)
        except BudgetSpent:
            raise StoreUnavailable(
                f"all {self._max_connections} of the store's connections to "
                f"{self._describe} stayed busy for {time.monotonic() - began:.1f} s; raise "
                "max_connections (or timeout), or call the store from fewer threads at once"
            ) from None
        if held is not None:
            if held.epoch == self._epoch:
                return held
            # Opened before a connection was lost: presumed dead too. Its place in the
            # budget goes to a new one.
            self._discard_server(held)
        try:
            opened = self._open(deadline)
        except BaseException:
            self._budget.give_back(None)
            raise
        assert isinstance(opened, _ServerHeld)
        return opened

    def _set_up_server(self, dbapi: Any, deadline: float) -> _ServerHeld:
        """Watch a new server connection and set its session up, by ``deadline``."""
        try:
            held = _ServerHeld(dbapi, self._epoch)
        except OSError as exc:  # no descriptor left for the watchdog's handle
            dbapi.close()
            raise self._unavailable(exc) from exc
        self._held.add(held)
        self._watchdog.watch(held)
        held.deadline = deadline or time.monotonic() + self._timeout
        try:
            # psycopg then hands timestamptz values back in the timezone.utc singleton,
            # which the reader passes through as they are; in a named zone (even
            # Etc/UTC) loading and converting each costs a microsecond. Every time the
            # store sends is an aware datetime, so its results do not depend on the
            # session's zone. (A SET that PgBouncer tracks for each client.)
            held.cursor.execute("SET TIME ZONE 'UTC'")
        except BaseException as exc:
            held.deadline = 0.0
            self._discard_server(held)
            if held.timed_out and isinstance(exc, self._error):
                raise self._too_slow() from exc
            raise
        held.deadline = 0.0
        return held

    def _server_give_back(self, held: _ServerHeld) -> None:
        # A call that returned has read all its results, so the connection is idle.
        if self._closed or held.epoch < self._epoch or held.timed_out:
            self._lose_server(held)
        else:
            surplus = self._budget.give_back(held)
            if surplus is not None:
                self._discard_server(surplus)
        if self._closed:
            # close() ran while this call was out, and may have drained the budget first.
            for idle in self._budget.drain():
                self._discard_server(idle)

    def _after_server_failure(self, held: _ServerHeld, exc: BaseException) -> None:
        """Give ``held`` back or close it after its call raised ``exc``; raises the
        timeout's error instead if the watchdog ended the call."""
        if held.timed_out:
            self._lose_server(held)
            if isinstance(exc, StoreUnavailable):
                raise self._too_slow() from exc.__cause__
            return
        if isinstance(exc, ConnectionLost):
            self._epoch += 1
            self._lose_server(held)
            return
        if self._is_idle(held):
            self._server_give_back(held)
            return
        # Interrupted while the server works on the statement (by a signal handler's
        # exception, say). Given back, the connection would fail its next call, and
        # every call after it, with "another command is already in progress"; left
        # running, the statement would keep its server process and locks busy.
        try:
            with contextlib.suppress(self._error):
                held.connection.cancel_safe(timeout=CANCEL_WAIT)
        finally:
            self._lose_server(held)

    @staticmethod
    def _is_idle(held: _ServerHeld) -> bool:
        """Whether the connection is open, in no transaction, and runs no statement."""
        from psycopg.pq import TransactionStatus  # loaded: this is a psycopg connection

        status = held.connection.info.transaction_status
        return bool(status == TransactionStatus.IDLE)

    def _lose_server(self, held: _ServerHeld) -> None:
        """Close ``held``; its place in the budget goes to the next caller."""
        self._discard_server(held)
        self._budget.give_back(None)

    def _discard_server(self, held: _ServerHeld) -> None:
        # Forgotten first, so that the watchdog never shuts a reused descriptor down.
        self._watchdog.forget(held)
        with contextlib.suppress(OSError):
            os.close(held.fd)
        self._discard(held)

    def _close_server(self) -> None:
        for held in self._budget.drain():
            self._discard_server(held)
        # Calls still in flight keep their deadlines: the watchdog stops after them.
        self._watchdog.stop()

    def _too_slow(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"database {self._describe} did not answer within the store's timeout of "
            f"{self._timeout:g} s; the call was abandoned and its connection closed"
        )
