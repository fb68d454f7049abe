"""Runs a store's statements on PostgreSQL, blocking the calling thread.

Each call runs on a held connection in autocommit: one statement, one round trip, no
separate BEGIN and COMMIT. A store holds at most ``max_connections`` of them, lent
longest waiter first (:mod:`~sauce_sql.backends.postgresql.budget`), and each call has
one deadline, kept by the store's watchdog thread
(:mod:`~sauce_sql.backends.postgresql.watchdog`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from sauce_sql.backends.base import ConnectionLost, Forks, Held, HeldConnections, Raw, Result
from sauce_sql.backends.postgresql.budget import BudgetSpent, ConnectionBudget
from sauce_sql.backends.postgresql.watchdog import Watchdog
from sauce_sql.engine import prepare_threshold
from sauce_sql.errors import StoreUnavailable
from sauce_sql.prepared import Prepared

__all__ = ["CANCEL_WAIT", "SERVER_NOW", "ServerExecutor"]

#: How long closing a connection interrupted mid-call waits for the server to take
#: the cancel request (the server answers at once; an unreachable one never does).
CANCEL_WAIT = 1.0

SERVER_NOW: Any = Raw("SELECT clock_timestamp()")


class _ServerHeld(Held):
    """A PostgreSQL connection, with what the watchdog reads (see
    :class:`sauce_sql.backends.postgresql.watchdog.Watched`)."""

    __slots__ = ("deadline", "fd", "timed_out")

    def __init__(self, connection: Any, epoch: int) -> None:
        super().__init__(connection, epoch)
        self.deadline = 0.0
        self.timed_out = False
        # The watchdog's own handle on the socket: it stays this socket's, whatever
        # becomes of the driver's descriptor, until the executor closes it.
        self.fd = os.dup(connection.fileno())


def too_slow(describe: str, timeout: float) -> StoreUnavailable:
    """The error of a call the server did not answer within the store's timeout."""
    return StoreUnavailable(
        f"database {describe} did not answer within the store's timeout of "
        f"{timeout:g} s; the call was abandoned and its connection closed"
    )


def budget_spent(describe: str, max_connections: int, waited: float) -> StoreUnavailable:
    """The error of a call that found every connection of the store busy throughout."""
    return StoreUnavailable(
        f"all {max_connections} of the store's connections to {describe} stayed busy for "
        f"{waited:.1f} s; raise max_connections (or timeout), or call the store from fewer "
        "threads at once"
    )


class ServerExecutor(HeldConnections):
    """Executes :class:`Prepared` statements for one store on a server database."""

    def __init__(
        self,
        engine: Engine,
        *,
        describe: str,
        timeout: float = 10.0,
        max_connections: int = 10,
        max_idle_connections: int | None = None,
    ) -> None:
        self._prepare_threshold = prepare_threshold(engine.url)
        self._timeout = timeout
        self._max_connections = max_connections
        self._keep_idle = max_connections if max_idle_connections is None else max_idle_connections
        super().__init__(engine, describe=describe)

    def fresh_state(self) -> None:
        super().fresh_state()
        # Held connections are detached from the engine's pool: without a budget, a
        # burst of threads would open as many server sessions.
        self._budget: ConnectionBudget[_ServerHeld] = ConnectionBudget(
            self._max_connections, self._keep_idle
        )
        self._watchdog = Watchdog(timeout=self._timeout, name="sauce-sql-watchdog")

    def write(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that writes; never retried, so never applied twice."""
        if self.generation != Forks.generation:
            self.after_fork()
        return self._run(prepared, prepared.parameters(values))

    def read(self, prepared: Prepared, values: Mapping[str, Any]) -> Result:
        """Run a statement that only reads; retried once on a fresh connection if the
        connection it got turns out to be dead (a restarted server, say)."""
        if self.generation != Forks.generation:
            self.after_fork()
        parameters = prepared.parameters(values)
        try:
            return self._run(prepared, parameters)
        except ConnectionLost:
            return self._run(prepared, parameters)

    def server_now(self) -> datetime:
        """The database server's clock; retried once on a fresh connection, like any
        read."""
        if self.generation != Forks.generation:
            self.after_fork()
        try:
            rows, _ = self._run(SERVER_NOW, ())
        except ConnectionLost:
            rows, _ = self._run(SERVER_NOW, ())
        now: datetime = rows[0][0]
        return now

    def close(self) -> None:
        """Close the connections the executor holds; ones in use close when given back."""
        self.closed = True
        if self.generation != Forks.generation:
            self.after_fork()
            return
        for held in self._budget.drain():
            self._discard_server(held)
        # Calls still in flight keep their deadlines: the watchdog stops after them.
        self._watchdog.stop()

    # -- calls ----------------------------------------------------------------------

    def _run(self, prepared: Prepared | Raw, parameters: Any) -> Result:
        """One call on a server connection, which the watchdog ends at its deadline."""
        began = time.monotonic()
        deadline = began + self._timeout
        held = self._connection(began, deadline)
        held.deadline = deadline
        try:
            result = self.execute(held, prepared, parameters)
        except BaseException as exc:
            held.deadline = 0.0
            self._after_failure(held, exc)
            raise
        held.deadline = 0.0
        self._give_back(held)
        return result

    def _connection(self, began: float, deadline: float) -> _ServerHeld:
        """A connection of the budget's, waiting in line for one until ``deadline``."""
        try:
            held = self._budget.take(deadline - began)
        except BudgetSpent:
            raise budget_spent(
                self.describe, self._max_connections, time.monotonic() - began
            ) from None
        if held is not None:
            if held.epoch == self.epoch:
                return held
            # Opened before a connection was lost: presumed dead too. Its place in the
            # budget goes to a new one.
            self._discard_server(held)
        try:
            return self._open(deadline)
        except BaseException:
            self._budget.give_back(None)
            raise

    def _open(self, deadline: float) -> _ServerHeld:
        """A new connection, watched and with its session set up by ``deadline``."""
        proxy = self.raw_connection()
        try:
            proxy.detach()
            dbapi: Any = proxy.dbapi_connection
            dbapi.autocommit = True
            # Whatever the engine says: see engine.prepare_threshold.
            dbapi.prepare_threshold = self._prepare_threshold
        except self.error as exc:
            proxy.invalidate(exc)
            raise self.unavailable(exc) from exc
        try:
            held = _ServerHeld(dbapi, self.epoch)
        except OSError as exc:  # no descriptor left for the watchdog's handle
            dbapi.close()
            raise self.unavailable(exc) from exc
        self.held.add(held)
        self._watchdog.watch(held)
        held.deadline = deadline
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
            if held.timed_out and isinstance(exc, self.error):
                raise too_slow(self.describe, self._timeout) from exc
            if isinstance(exc, self.error):
                raise self.unavailable(exc) from exc
            raise
        held.deadline = 0.0
        return held

    def _give_back(self, held: _ServerHeld) -> None:
        # A call that returned has read all its results, so the connection is idle.
        if self.closed or held.epoch < self.epoch or held.timed_out:
            self._lose(held)
        else:
            surplus = self._budget.give_back(held)
            if surplus is not None:
                self._discard_server(surplus)
        if self.closed:
            # close() ran while this call was out, and may have drained the budget first.
            for idle in self._budget.drain():
                self._discard_server(idle)

    def _after_failure(self, held: _ServerHeld, exc: BaseException) -> None:
        """Give ``held`` back or close it after its call raised ``exc``; raises the
        timeout's error instead if the watchdog ended the call."""
        if held.timed_out:
            self._lose(held)
            if isinstance(exc, StoreUnavailable):
                raise too_slow(self.describe, self._timeout) from exc.__cause__
            return
        if isinstance(exc, ConnectionLost):
            self.epoch += 1
            self._lose(held)
            return
        if self._is_idle(held):
            self._give_back(held)
            return
        # Interrupted while the server works on the statement (by a signal handler's
        # exception, say). Given back, the connection would fail its next call, and
        # every call after it, with "another command is already in progress"; left
        # running, the statement would keep its server process and locks busy.
        try:
            with contextlib.suppress(self.error):
                held.connection.cancel_safe(timeout=CANCEL_WAIT)
        finally:
            self._lose(held)

    @staticmethod
    def _is_idle(held: _ServerHeld) -> bool:
        """Whether the connection is open, in no transaction, and runs no statement."""
        from psycopg.pq import TransactionStatus  # loaded: this is a psycopg connection

        status = held.connection.info.transaction_status
        return bool(status == TransactionStatus.IDLE)

    def _lose(self, held: _ServerHeld) -> None:
        """Close ``held``; its place in the budget goes to the next caller."""
        self._discard_server(held)
        self._budget.give_back(None)

    def _discard_server(self, held: _ServerHeld) -> None:
        # Forgotten first, so that the watchdog never shuts a reused descriptor down.
        self._watchdog.forget(held)
        with contextlib.suppress(OSError):
            os.close(held.fd)
        self.discard(held)
