"""What every backend's executor is, and the connection keeping they share.

An executor runs :class:`~sauce_sql.prepared.Prepared` statements for one store:
``read`` (retried once on a fresh connection if the one it got was dead), ``write``
(never retried, so never applied twice), ``checkpoint_soon`` (a hint, for SQLite files)
and ``close``. :class:`Executor` is the synchronous shape, :class:`AsyncExecutor` the
asyncio one; each backend (:mod:`sauce_sql.backends`) has its own implementations.

The store holds its connections itself rather than checking one out of the engine's
pool per call: a checkout costs as much as a SQLite read. It takes them from the
engine's pool once and detaches them, so the engine's ``connect`` listeners still run
and an application's pool is not drained. The pool's own options (``pool_pre_ping``,
``pool_recycle``) do not apply to them: a dead connection shows itself by failing a
call, which is then retried once if it only read, and it is replaced together with
every connection opened before it.

Every driver error leaves through :meth:`HeldConnections.unavailable` as
:class:`StoreUnavailable` with the cause chained, but for a value the database's
encoding cannot hold, which is the caller's :class:`InvalidInput`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Dialect, Engine
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql.errors import StoreUnavailable, unavailable, unstorable
from sauce_sql.prepared import Prepared

__all__ = [
    "AsyncExecutor",
    "ConnectionLost",
    "Executor",
    "Forks",
    "Held",
    "HeldConnections",
    "Raw",
    "Result",
]

Result = tuple[list[Sequence[Any]], int]
"""The rows a statement returned and the number of rows it changed."""


class Executor(Protocol):
    """Runs a store's statements, blocking the calling thread."""

    @property
    def dialect(self) -> Dialect:
        """The SQLAlchemy dialect of the database."""

    def read(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that only reads."""

    def write(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that writes; never retried."""

    def checkpoint_soon(self) -> None:
        """A hint that much was written (a SQLite file folds its log in soon)."""

    def close(self) -> None:
        """Close the connections held."""


class AsyncExecutor(Protocol):
    """Runs a store's statements without ever holding the event loop while it waits."""

    @property
    def dialect(self) -> Dialect:
        """The SQLAlchemy dialect of the database."""

    def read(self, prepared: Prepared, values: Mapping[str, Any]) -> Awaitable[Result]:
        """Run a statement that only reads."""

    def write(self, prepared: Prepared, values: Mapping[str, Any]) -> Awaitable[Result]:
        """Run a statement that writes; never retried."""

    def write_slow(self, prepared: Prepared, values: Mapping[str, Any]) -> Awaitable[Result]:
        """Run a write that may take milliseconds (a cleanup batch) off the loop."""

    def checkpoint_soon(self) -> None:
        """A hint that much was written (a SQLite file folds its log in soon)."""

    async def close(self) -> None:
        """Close the connections held."""


class Forks:
    """Counts forks, so an executor notices it is in a child for the cost of a compare."""

    generation = 0

    @classmethod
    def bump(cls) -> None:
        cls.generation += 1


os.register_at_fork(after_in_child=Forks.bump)


class Raw:
    """A fixed SQL text run as it is, in the shape of a :class:`Prepared`."""

    def __init__(self, sql: str, *, returns_rows: bool = True) -> None:
        self.sql = sql
        self.returns_rows = returns_rows


class ConnectionLost(StoreUnavailable):
    """The connection died under a call; it has been closed and will be replaced."""


class Held:
    """A DBAPI connection the executor holds, with its one reused cursor."""

    __slots__ = ("busy_ms", "connection", "cursor", "epoch")

    def __init__(self, connection: Any, epoch: int) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        # SQLite: the busy timeout the connection has now (set by its backend).
        self.busy_ms = 0
        # Connections older than the last lost one are presumed dead too (a restarted
        # server ends them all), and are dropped when given back.
        self.epoch = epoch


class HeldConnections:
    """What every synchronous executor does with the connections it holds: open them
    from the engine, run a statement on one with errors translated, close them, and
    start afresh in a forked child."""

    def __init__(self, engine: Engine, *, describe: str) -> None:
        self.engine = engine
        self._dialect = engine.dialect
        self.error: type[Any] = engine.dialect.loaded_dbapi.Error
        self.describe = describe
        self.closed = False
        # Connections inherited over fork(): the parent still owns them, so the child
        # neither uses nor closes them (closing a PostgreSQL one would end the parent's
        # session); it only keeps them from being garbage collected.
        self._inherited: list[Any] = []
        self.fresh_state()

    @property
    def dialect(self) -> Dialect:
        """The SQLAlchemy dialect of the database."""
        return self._dialect

    def fresh_state(self) -> None:
        """Forget every connection and lock: at creation, and in a forked child."""
        self.generation = Forks.generation
        self.epoch = 0
        self.held: set[Held] = set()

    def after_fork(self) -> None:
        """In a forked child: leave the parent's connections alone and start afresh."""
        # The engine's pool still holds the parent's connections (the migration's, say):
        # drop them unclosed, or parent and child would share one socket or file handle.
        self.engine.dispose(close=False)
        self._inherited.extend(held.connection for held in self.held)
        # Locks held by another thread at fork time would stay held in the child.
        self.fresh_state()

    def checkpoint_soon(self) -> None:
        """Nothing to fold in, but on a SQLite file."""

    def raw_connection(self) -> Any:
        """A new pool-proxied connection of the engine's, or StoreUnavailable."""
        if self.closed:
            raise StoreUnavailable("the store's connections are closed")
        try:
            return self.engine.raw_connection()
        except (SQLAlchemyError, self.error) as exc:
            raise self.unavailable(exc) from exc

    def discard(self, held: Held) -> None:
        """Close ``held`` and forget it."""
        self.held.discard(held)
        # A failing close means the connection is broken already; it is gone either way.
        with contextlib.suppress(self.error):
            held.cursor.close()
        if self.owns_connection(held):
            with contextlib.suppress(self.error):
                held.connection.close()

    def owns_connection(self, held: Held) -> bool:
        """Whether closing ``held`` is the executor's to do (not the engine's)."""
        return True

    def execute(self, held: Held, prepared: Prepared | Raw, parameters: Any) -> Result:
        """Run one statement on ``held``: the one place driver errors are translated."""
        cursor = held.cursor
        try:
            cursor.execute(prepared.sql, parameters)
            rows = cursor.fetchall() if prepared.returns_rows else []
        except UnicodeEncodeError as exc:  # psycopg, for a database that is not UTF8
            raise (unstorable(exc) or self.unavailable(exc)) from exc
        except self.error as exc:
            if self._dialect.is_disconnect(exc, held.connection, cursor):
                raise ConnectionLost(*self.unavailable(exc).args) from exc
            raise (unstorable(exc) or self.unavailable(exc)) from exc
        return rows, cursor.rowcount

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        """``exc`` as the store's error, cause chained by the caller."""
        return unavailable(f"database {self.describe} is unavailable", exc)

    def server_now(self) -> datetime:
        """The database server's clock; only a server database has one to offer."""
        raise NotImplementedError(f"{self._dialect.name} has no server clock")
