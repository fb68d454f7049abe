"""The connections of a SQLite executor: set up for the store, one writer, readers.

Each is the store's own, taken from the engine's pool and detached
(:mod:`~sauce_sql.backends.base`), set up for SQLite and in autocommit. The writers of
a store share one writer's connection, under :attr:`SQLiteConnections.lock`. Readers of
a file database run beside the writers (WAL) on connections of their own, kept on a
free list (a plain list: ``append`` and ``pop`` are atomic), so the store holds about
as many as there are threads calling it at once. An in-memory database is one
connection, kept checked out of the engine's pool, that readers and writers take turns
on.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from sauce_sql import engine as sqlite_setup
from sauce_sql.backends.base import ConnectionLost, Held, HeldConnections, Raw, Result
from sauce_sql.backends.sqlite.checkpoints import BACKSTOP_FRAMES, LOG_SIZE_LIMIT
from sauce_sql.browsers import cached_family
from sauce_sql.engine import configure_sqlite, is_memory
from sauce_sql.history_sql import SQLITE_FAMILY_FUNCTION, SQLITE_MASK_FUNCTION
from sauce_sql.prepared import Prepared
from sauce_sql.privacy import mask_ip

__all__ = ["MAX_IDLE", "SQLiteConnections"]

#: Idle reader connections kept beyond this many are closed when given back.
MAX_IDLE = 8


class SQLiteConnections(HeldConnections):
    """What a SQLite executor does with its connections (see the module docstring)."""

    def __init__(self, engine: Engine, *, durability: str, describe: str) -> None:
        self._durability = durability
        self._memory = is_memory(engine.url)
        super().__init__(engine, describe=describe)

    def fresh_state(self) -> None:
        super().fresh_state()
        self._idle: list[Held] = []
        self._writer: Held | None = None
        self._memory_proxy: PoolProxiedConnection | None = None
        self._memory_isolation: str | None = ""
        #: Held while the writer's connection (in memory: the one connection) is used.
        self.lock = threading.Lock()
        #: Set by a checkpoint after which the next write works on the log (see
        #: executor._log_work_due), cleared as a write on the writer's connection
        #: begins. The write that starts the log over fsyncs its header (with
        #: synchronous=NORMAL too), a millisecond or more: an asyncio store leaves
        #: such a write to a worker thread rather than run it on the loop.
        self.log_work_due = False

    def after_fork(self) -> None:
        if self._memory_proxy is not None:
            self._inherited.append(self._memory_proxy)
        super().after_fork()

    @property
    def memory(self) -> bool:
        """Whether this is an in-memory database (one connection, no log)."""
        return self._memory

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
            # Retention names the browser families of the sessions it folds with it.
            dbapi.create_function(SQLITE_FAMILY_FUNCTION, 1, cached_family, deterministic=True)
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
        held.busy_ms = sqlite_setup.BUSY_TIMEOUT_MS  # as configure_sqlite set it
        self.held.add(held)
        return held

    def owns_connection(self, held: Held) -> bool:
        return held.connection is not getattr(self._memory_proxy, "dbapi_connection", None)

    def writer_connection(self) -> Any:
        """The writer's DBAPI connection (the only one, in memory); the lock is held."""
        if self._writer is None:
            self._writer = self.open()
        return self._writer.connection

    def run_on_writer(self, connection: Any, prepared: Prepared | Raw, parameters: Any) -> Result:
        """Run a statement on the writer's connection; the lock is held."""
        writer = self._writer
        assert writer is not None
        self.log_work_due = False  # this write (if it is one) does that work
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

    def close_connections(self) -> None:
        """Close the writer's connection, the in-memory one and the idle readers (the
        lock is taken here); readers in use close when given back."""
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
