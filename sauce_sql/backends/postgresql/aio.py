"""Runs an asyncio store's statements on PostgreSQL with psycopg's ``AsyncConnection``
(or asyncpg).

Every wait is awaited: the connect, a place among the store's ``max_connections``
(handed out longest waiter first: :mod:`~sauce_sql.backends.postgresql.aio_budget`),
the statement. Each call has one deadline. A call past it has its connection's socket
shut down, as the synchronous store's watchdog does
(:mod:`~sauce_sql.backends.postgresql.watchdog`): cancelling the awaiting coroutine
instead would have psycopg send the server a cancel request and wait up to seconds for
a server that may not answer at all. The deadlines are kept on one timer of the loop
(:mod:`~sauce_sql.backends.postgresql.aio_watchdog`), not one per call.

A call cancelled by its caller leaves its connection only if the connection is idle;
otherwise psycopg has already tried to cancel the statement, and the connection is
closed. The statement may have been applied (at most once: writes are never retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Dialect

from sauce_sql.backends.base import ConnectionLost, Raw, Result
from sauce_sql.backends.postgresql.aio_budget import AsyncBudget
from sauce_sql.backends.postgresql.aio_watchdog import AsyncWatchdog
from sauce_sql.backends.postgresql.budget import BudgetSpent
from sauce_sql.backends.postgresql.executor import SERVER_NOW, budget_spent, too_slow
from sauce_sql.errors import StoreUnavailable, unavailable, unstorable
from sauce_sql.prepared import Prepared

__all__ = ["AsyncServerExecutor", "AsyncpgDriver", "Connect", "Driver"]

Connect = Callable[[], Awaitable[Any]]
"""Opens a new ``psycopg.AsyncConnection`` in autocommit."""


_SET_UP: Any = Raw("SET TIME ZONE 'UTC'", returns_rows=False)


class Driver:
    """What the executor needs of an asyncio driver: psycopg's, unless said otherwise."""

    def __init__(self) -> None:
        import psycopg

        self.error: tuple[type[BaseException], ...] = (psycopg.Error,)
        self._idle = psycopg.pq.TransactionStatus.IDLE

    def cursor(self, connection: Any) -> Any:
        """What statements run through (reused for every call on the connection)."""
        return connection.cursor()

    def fetch(self, held: _Held, sql: str, parameters: Any) -> Awaitable[list[Sequence[Any]]]:
        """Run one statement that returns rows (a RETURNING's as many as it changed)."""
        return self._fetch_all(held.cursor, sql, parameters)

    @staticmethod
    async def _fetch_all(cursor: Any, sql: str, parameters: Any) -> list[Sequence[Any]]:
        await cursor.execute(sql, parameters)
        rows: list[Sequence[Any]] = await cursor.fetchall()
        return rows

    async def execute(self, held: _Held, sql: str, parameters: Any) -> Result:
        """Run one statement that returns no rows; no rows and the number it changed."""
        cursor = held.cursor
        await cursor.execute(sql, parameters)
        return [], cursor.rowcount

    def lost(self, connection: Any) -> bool:
        """Whether the connection is dead (after a driver error)."""
        return bool(connection.closed or connection.broken)

    def idle(self, connection: Any) -> bool:
        """Whether the connection is open and runs nothing: safe to reuse."""
        return bool(connection.info.transaction_status == self._idle)

    def end(self, connection: Any) -> None:
        """Make a call in flight fail now: shut the socket under the driver."""
        with contextlib.suppress(OSError, ValueError):
            fd = os.dup(connection.fileno())
            with socket.socket(fileno=fd) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    async def close(self, connection: Any) -> None:
        """Close the connection."""
        await connection.close()


class AsyncpgDriver(Driver):
    """asyncpg (``postgresql+asyncpg://``)."""

    def __init__(self) -> None:
        import asyncpg

        self.error = (asyncpg.PostgresError, asyncpg.InterfaceError)

    def cursor(self, connection: Any) -> Any:
        return connection

    def fetch(self, held: _Held, sql: str, parameters: Any) -> Awaitable[list[Sequence[Any]]]:
        # asyncpg's own coroutine, awaited by the executor: no coroutine of ours between.
        fetched: Awaitable[list[Sequence[Any]]] = held.connection.fetch(sql, *parameters)
        return fetched

    async def execute(self, held: _Held, sql: str, parameters: Any) -> Result:
        status = await held.connection.execute(sql, *parameters)
        count = status.rpartition(" ")[2]
        return [], int(count) if count.isdigit() else 0

    def lost(self, connection: Any) -> bool:
        return bool(connection.is_closed())

    def idle(self, connection: Any) -> bool:
        # asyncpg cannot say whether a cancelled statement still runs: never reuse.
        return False

    def end(self, connection: Any) -> None:
        connection.terminate()

    async def close(self, connection: Any) -> None:
        await connection.close(timeout=CLOSE_WAIT)


#: How long closing an asyncpg connection may wait for the server to say goodbye.
CLOSE_WAIT = 1.0


class _Held:
    """An asyncio connection the executor holds, with its one reused cursor."""

    __slots__ = ("connection", "cursor", "epoch", "timed_out")

    def __init__(self, connection: Any, cursor: Any, epoch: int) -> None:
        self.connection = connection
        self.cursor = cursor
        self.epoch = epoch
        self.timed_out = False


class AsyncServerExecutor:
    """Executes :class:`Prepared` statements for one asyncio store on PostgreSQL."""

    def __init__(
        self,
        connect: Connect,
        dialect: Dialect,
        *,
        describe: str,
        timeout: float,
        max_connections: int,
        max_idle_connections: int,
        driver: Driver | None = None,
    ) -> None:
        self._connect = connect
        self._dialect = dialect
        self._driver = Driver() if driver is None else driver
        # The driver's errors, and the socket's.
        self._errors: tuple[type[BaseException], ...] = (*self._driver.error, OSError)
        self._describe = describe
        self._timeout = timeout
        self._max_connections = max_connections
        self._budget: AsyncBudget[_Held] = AsyncBudget(max_connections, max_idle_connections)
        # The deadline of every statement in flight, on one timer of the loop.
        self._watchdog: AsyncWatchdog[_Held] = AsyncWatchdog(self._end)
        self._epoch = 0
        self._closed = False
        # The loop the store runs on (one loop per store), taken at its first call.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Connections interrupted mid-statement, closing in the background.
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def dialect(self) -> Dialect:
        """The SQLAlchemy dialect of the database."""
        return self._dialect

    def read(self, prepared: Prepared, values: Mapping[str, Any]) -> Awaitable[Result]:
        """Run a statement that only reads; retried once on a fresh connection if the
        connection it got turns out to be dead (a restarted server, say)."""
        # The call's own coroutine is _run's: one fewer on every call's path.
        return self._run(prepared, prepared.parameters(values), retry=True)

    def write(self, prepared: Prepared, values: Mapping[str, Any]) -> Awaitable[Result]:
        """Run a statement that writes; never retried, so never applied twice."""
        return self._run(prepared, prepared.parameters(values))

    write_slow = write

    def idle_cursor(self) -> Any | None:
        """What the next call's statement would run through (the driver's cursor, or
        asyncpg's connection) if a connection is idle, else None; left in the store's
        hands. The bench runs the driver's own calls on it: the same server session."""
        held = self._budget.peek_idle()
        return None if held is None else held.cursor

    def checkpoint_soon(self) -> None:
        """Nothing to fold in: the server keeps its own log."""

    async def server_now(self) -> datetime:
        """The database server's clock; retried once on a fresh connection."""
        rows, _ = await self._run(SERVER_NOW, (), retry=True)
        now: datetime = rows[0][0]
        return now

    async def close(self) -> None:
        """Close the idle connections; ones in use close when given back."""
        self._closed = True
        for held in self._budget.drain():
            await self._discard(held)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        # Calls still in flight, and tasks in line for a connection, keep their
        # deadlines: each watchdog's timer fires once more at most, finding nothing.

    # -- calls ----------------------------------------------------------------------

    async def _run(
        self, prepared: Prepared | Raw, parameters: Any, *, retry: bool = False
    ) -> Result:
        """One call: a connection of the budget's, the statement on it by the deadline;
        with ``retry``, once more on a fresh connection if the one it got was dead."""
        loop = self._loop
        if loop is None:
            # Kept: before 3.12, get_running_loop() makes a getpid() system call.
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        # Nearly every call: an idle connection, nobody in line, nothing awaited.
        held = self._budget.take_idle()
        driver = self._driver
        if held is None or held.epoch != self._epoch or driver.lost(held.connection):
            try:
                held = await self._connection(loop, deadline, held)
            except ConnectionLost:
                if not retry:
                    raise
                return await self._run(prepared, parameters)  # lost while being set up
        # _execute's steps, written out: one coroutine fewer on every call's path.
        watchdog = self._watchdog
        watchdog.watch(held, deadline)
        try:
            if prepared.returns_rows:
                rows = await driver.fetch(held, prepared.sql, parameters)
                result: Result = rows, len(rows)
            else:
                result = await driver.execute(held, prepared.sql, parameters)
        except BaseException as exc:
            watchdog.forget(held)
            try:
                await self._after_failure(held, exc, keep=True)
            except ConnectionLost:
                if not retry:
                    raise
            else:
                raise  # a cancellation, say: nothing of the store's to raise instead
            return await self._run(prepared, parameters)
        watchdog.forget(held)
        self._give_back(held)
        return result

    async def _connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float, held: _Held | None
    ) -> _Held:
        """A usable connection, given ``held``: an idle one that is not (its place is
        then the caller's already), or None (wait in line for one until ``deadline``)."""
        if held is None:
            try:
                held = await self._budget.take(deadline)
            except BudgetSpent:
                waited = loop.time() - deadline + self._timeout
                raise budget_spent(self._describe, self._max_connections, waited) from None
        try:
            if held is not None:
                if held.epoch == self._epoch and not self._driver.lost(held.connection):
                    return held
                # Dead, or opened before a connection was lost: presumed dead too. Its
                # place in the budget goes to a new one.
                await self._discard(held)
            return await self._open(loop, deadline)
        except BaseException:
            self._budget.give_back(None)
            raise

    async def _open(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Held:
        """A new connection, its session set up, by ``deadline``."""
        if self._closed:
            raise StoreUnavailable("the store's connections are closed")
        try:
            connection = await asyncio.wait_for(self._connect(), max(deadline - loop.time(), 0))
        except asyncio.TimeoutError as exc:
            raise too_slow(self._describe, self._timeout) from exc
        except self._errors as exc:
            raise self._unavailable(exc) from exc
        held = _Held(connection, self._driver.cursor(connection), self._epoch)
        # See the synchronous executor: results come back in timezone.utc.
        await self._execute(held, _SET_UP, (), deadline, keep=False)
        return held

    async def _execute(
        self,
        held: _Held,
        prepared: Prepared | Raw,
        parameters: Any,
        deadline: float,
        *,
        keep: bool = True,
    ) -> Result:
        """Run one statement on ``held`` by ``deadline``. On failure the connection is
        given back (if idle and ``keep``) or closed, its place in the budget given back
        but for a connection being opened (``keep`` false), and the store's error
        raised."""
        watchdog = self._watchdog
        watchdog.watch(held, deadline)
        try:
            if prepared.returns_rows:
                rows = await self._driver.fetch(held, prepared.sql, parameters)
                result: Result = rows, len(rows)
            else:
                result = await self._driver.execute(held, prepared.sql, parameters)
        except BaseException as exc:
            watchdog.forget(held)
            await self._after_failure(held, exc, keep=keep)
            raise  # _after_failure raises the store's error for driver errors
        watchdog.forget(held)
        return result

    def _end(self, held: _Held) -> None:
        """The call's deadline passed: shut its socket so the awaiting driver fails now."""
        held.timed_out = True
        self._driver.end(held.connection)

    def _give_back(self, held: _Held) -> None:
        """Give back an idle connection (or close it) and its place in the budget."""
        if self._closed or held.epoch < self._epoch:
            self._close_soon(held)
            self._budget.give_back(None)
            return
        surplus = self._budget.give_back(held)
        if surplus is not None:
            self._close_soon(surplus)

    async def _after_failure(self, held: _Held, exc: BaseException, *, keep: bool) -> None:
        """Keep ``held`` (if ``keep`` and it is idle) or close it after its call raised
        ``exc``; raise the store's error for a timeout or a driver error."""
        driver_error = isinstance(exc, self._errors)
        lost = driver_error and self._driver.lost(held.connection)
        if held.timed_out or lost or not keep:
            try:
                await self._discard(held)
            finally:
                if keep:
                    self._budget.give_back(None)
        elif self._driver.idle(held.connection):
            # Cancelled or interrupted too: psycopg has tried to cancel the statement.
            self._give_back(held)
        else:
            self._close_soon(held)
            self._budget.give_back(None)
        if held.timed_out:
            raise too_slow(self._describe, self._timeout) from exc
        if lost:
            self._epoch += 1
            raise ConnectionLost(*self._unavailable(exc).args) from exc
        if driver_error or isinstance(exc, UnicodeEncodeError):
            raise (unstorable(exc) or self._unavailable(exc)) from exc

    def _close_soon(self, held: _Held) -> None:
        task = asyncio.get_running_loop().create_task(self._discard(held))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _discard(self, held: _Held) -> None:
        with contextlib.suppress(*self._errors, asyncio.TimeoutError):
            await self._driver.close(held.connection)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return unavailable(f"database {self._describe} is unavailable", exc)
