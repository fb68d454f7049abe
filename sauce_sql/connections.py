"""Runs prepared statements on the store's connections; the one error boundary.

SQLite allows one writer at a time, and its busy handler makes waiting writers sleep
and retry rather than queue. So the writers of one store queue on a Python lock and
share one held connection; readers of a file database take pooled connections and run
beside them (WAL). An in-memory database is one connection, so every call queues.
PostgreSQL takes a pooled connection per call, in autocommit: one statement, one round
trip, no separate BEGIN and COMMIT.

Every driver or SQLAlchemy error leaves through :meth:`Executor._unavailable` as
:class:`StoreUnavailable` with the cause chained.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from sauce_sql.engine import configure_sqlite, is_memory
from sauce_sql.errors import StoreUnavailable, unavailable
from sauce_sql.prepared import Prepared

__all__ = ["ConnectionLost", "Executor", "Result"]

Result = tuple[list[Sequence[Any]], int]
"""The rows a statement returned and the number of rows it changed."""


class ConnectionLost(StoreUnavailable):
    """The connection died under a call; the pool has been told to replace it."""


class Executor:
    """Executes :class:`Prepared` statements for one store."""

    def __init__(self, engine: Engine, *, durability: str, describe: str) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._describe = describe
        self._durability = durability
        self._sqlite = engine.dialect.name == "sqlite"
        self._memory = self._sqlite and is_memory(engine.url)
        self._lock = threading.Lock()
        self._writer: PoolProxiedConnection | None = None
        self._writer_isolation: str | None = ""
        self._pid = os.getpid()
        # Connections inherited over fork(): the parent still owns them, so the child
        # neither uses nor closes them (closing a PostgreSQL one would end the parent's
        # session); it only keeps them from being garbage collected into the pool.
        self._inherited: list[PoolProxiedConnection] = []

    # -- public surface -------------------------------------------------------------

    def write(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that writes; never retried, so never applied twice."""
        self._after_fork_check()
        if self._sqlite:
            with self._lock:
                return self._run_on_writer(prepared, values)
        return self._run_pooled(prepared, values)

    def read(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that only reads; retried once on a fresh connection if the
        connection it got turns out to be dead (a restarted server, say)."""
        self._after_fork_check()
        if self._memory:
            with self._lock:
                return self._run_on_writer(prepared, values)
        try:
            return self._run_pooled(prepared, values)
        except ConnectionLost:
            return self._run_pooled(prepared, values)

    def close(self) -> None:
        """Give the held writer connection back to the pool."""
        with self._lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                dbapi: Any = writer.dbapi_connection
                if dbapi is not None:
                    dbapi.isolation_level = self._writer_isolation
                writer.close()

    # -- connections ----------------------------------------------------------------

    def _after_fork_check(self) -> None:
        if os.getpid() == self._pid:
            return
        self._pid = os.getpid()
        # A lock held by another thread at fork time would stay held in the child.
        self._lock = threading.Lock()
        if self._writer is not None:
            self._inherited.append(self._writer)
            self._writer = None

    def _checkout(self) -> PoolProxiedConnection:
        try:
            connection = self.engine.raw_connection()
        except (SQLAlchemyError, self.dialect.loaded_dbapi.Error) as exc:
            raise self._unavailable(exc) from exc
        if not self._sqlite:
            dbapi: Any = connection.dbapi_connection
            dbapi.autocommit = True
        return connection

    def _release(self, connection: PoolProxiedConnection) -> None:
        dbapi: Any = connection.dbapi_connection
        if dbapi is not None and not self._sqlite:
            # The pool may be the application's: hand connections back as found.
            try:
                dbapi.autocommit = False
            except self.dialect.loaded_dbapi.Error as exc:
                connection.invalidate(exc)
        connection.close()

    def _writer_connection(self) -> PoolProxiedConnection:
        if self._writer is None:
            writer = self._checkout()
            try:
                configure_sqlite(
                    writer.dbapi_connection, durability=self._durability, memory=self._memory
                )
            except self.dialect.loaded_dbapi.Error as exc:
                writer.invalidate(exc)
                raise self._unavailable(exc) from exc
            # Autocommit: each statement is its own transaction, and SQLite takes the
            # write lock as the statement starts, so no deferred-transaction upgrade
            # can fail with SQLITE_BUSY.
            dbapi: Any = writer.dbapi_connection
            self._writer_isolation = dbapi.isolation_level
            dbapi.isolation_level = None
            self._writer = writer
        return self._writer

    # -- execution ------------------------------------------------------------------

    def _run_on_writer(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        writer = self._writer_connection()
        try:
            return self._execute(writer, prepared, values)
        except ConnectionLost:
            self._writer = None
            raise

    def _run_pooled(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        connection = self._checkout()
        try:
            result = self._execute(connection, prepared, values)
        except ConnectionLost:
            raise
        except BaseException:
            self._release(connection)
            raise
        self._release(connection)
        return result

    def _execute(
        self, connection: PoolProxiedConnection, prepared: Prepared, values: Mapping[str, Any]
    ) -> Result:
        dbapi = connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            cursor.execute(prepared.sql, prepared.parameters(values))
            rows = list(cursor.fetchall()) if cursor.description else []
            return rows, cursor.rowcount
        except self.dialect.loaded_dbapi.Error as exc:
            if self.dialect.is_disconnect(exc, dbapi, cursor):
                # Let the pool replace every connection as old as this one: after a
                # server restart they are all dead.
                self.engine.pool._invalidate(connection, exc)  # noqa: SLF001
                connection.invalidate(exc)
                raise ConnectionLost(*self._unavailable(exc).args) from exc
            raise self._unavailable(exc) from exc
        finally:
            # A failing close means the connection is already broken, and that has
            # been reported above.
            with contextlib.suppress(self.dialect.loaded_dbapi.Error):
                cursor.close()

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return unavailable(f"database {self._describe} is unavailable", exc)
