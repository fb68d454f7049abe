"""A deadline for each step of a store's start() on a server.

start() checks the schema and migrates through SQLAlchemy and Alembic, on connections
of the engine rather than of the executor, so the executor's per-call deadline does
not reach them. A server that goes silent after accepting the connection (frozen, or
stuck on a hung disk) would hold start() for ever: libpq's connect timeout covers only
the handshake. So while a :class:`StartDeadline` is entered, every connection its
engine opens or lends in that context (thread or task) is watched by a
:class:`~sauce_sql.backends.postgresql.watchdog.Watchdog` of its own, which shuts the
socket of one past its deadline down; the driver waiting on it then fails at once,
and the step's error says what start() was doing. Each step (connecting, checking the
schema, waiting for the migration lock, migrating) has the store's timeout.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, event

from sauce_sql.backends.postgresql.watchdog import Watchdog
from sauce_sql.errors import StoreUnavailable

__all__ = ["StartDeadline"]

# The deadline entered in this thread or task: a connection opened on the same engine
# by another thread (or task) meanwhile is not start()'s, and is left alone.
_ENTERED: ContextVar[StartDeadline | None] = ContextVar("sauce_sql_start", default=None)
# The engines that report their connections (see _hook).
_HOOKED: weakref.WeakSet[Engine] = weakref.WeakSet()
_HOOKING = threading.Lock()


class _Watched:
    """One connection start() uses (see watchdog.Watched)."""

    __slots__ = ("deadline", "fd", "timed_out")

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd = fd
        self.deadline = deadline
        self.timed_out = False


def _socket_of(dbapi_connection: Any) -> int:
    """The socket descriptor under a driver connection (psycopg's, or asyncpg's
    behind SQLAlchemy's asyncio adapter)."""
    driver = getattr(dbapi_connection, "driver_connection", None) or dbapi_connection
    fileno = getattr(driver, "fileno", None)
    if fileno is not None:
        return int(fileno())
    # asyncpg keeps its socket in its asyncio transport, and names no public way to it.
    transport = driver._transport  # noqa: SLF001
    return int(transport.get_extra_info("socket").fileno())


def _hook(engine: Engine) -> None:
    """Have ``engine`` report its connections to the deadline entered, if any (once
    per engine; with none entered, each connect and checkout costs a lookup)."""

    def seen(dbapi_connection: Any, *_: Any) -> None:
        entered = _ENTERED.get()
        if entered is not None and entered.engine is engine:
            entered.watch(dbapi_connection)

    with _HOOKING:
        if engine in _HOOKED:
            return
        # insert=True: before SQLAlchemy's first look at a new server (its version),
        # which runs in a "connect" listener of its own.
        event.listen(engine, "connect", seen, insert=True)
        event.listen(engine, "checkout", seen)
        _HOOKED.add(engine)


class StartDeadline:
    """The steps of one start() on ``engine``, each bounded by ``timeout`` seconds; a
    no-op on SQLite (whose waits the busy timeout bounds).

    Use it as a context manager around the schema work, and call :meth:`step` as each
    step begins; a step past its deadline ends in StoreUnavailable naming it.
    """

    def __init__(self, engine: Engine, *, timeout: float, describe: str) -> None:
        self.engine = engine
        self.timeout = timeout
        self._describe = describe
        self._server = engine.dialect.name == "postgresql"
        self._doing = "connecting"
        self._due = 0.0
        self._watched: dict[int, _Watched] = {}
        self._watchdog: Watchdog | None = None
        self._token: Token[StartDeadline | None] | None = None

    def step(self, doing: str) -> None:
        """A step begins (``doing`` says what it does, for the error): every
        connection in use has ``timeout`` seconds again."""
        self._doing = doing
        self._due = time.monotonic() + self.timeout
        for watched in self._watched.values():
            watched.deadline = self._due

    def watch(self, dbapi_connection: Any) -> None:
        """Keep an eye on a connection start() opened or took from the pool."""
        if self._watchdog is None or id(dbapi_connection) in self._watched:
            return
        try:
            fd = os.dup(_socket_of(dbapi_connection))
        except (AttributeError, OSError, ValueError):  # no socket to be had: not bounded
            return
        watched = _Watched(fd, self._due)
        self._watched[id(dbapi_connection)] = watched
        self._watchdog.watch(watched)

    def __enter__(self) -> StartDeadline:
        self.step("connecting")
        if self._server:
            _hook(self.engine)
            self._watchdog = Watchdog(timeout=self.timeout, name="sauce-sql-start-watchdog")
            self._token = _ENTERED.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _ENTERED.reset(self._token)
            self._token = None
        timed_out = False
        watchdog, self._watchdog = self._watchdog, None
        for watched in self._watched.values():
            timed_out = timed_out or watched.timed_out
            if watchdog is not None:
                watchdog.forget(watched)
            with contextlib.suppress(OSError):
                os.close(watched.fd)
        self._watched.clear()
        if watchdog is not None:
            watchdog.stop()
        if exc is not None and timed_out:
            raise StoreUnavailable(
                f"database {self._describe} did not answer within the store's timeout of "
                f"{self.timeout:g} s while {self._doing}; start() gave up and closed its "
                "connection"
            ) from exc
