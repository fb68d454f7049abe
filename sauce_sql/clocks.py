"""Where ``now`` comes from: the injected clock, the database server's, or the process's.

Every expiry decision compares ``now`` with stored times, so app servers sharing one
database must agree on it: with one server's clock ten minutes ahead, its cleanup
deleted sessions the others still served, and its ``new_session`` replaced them. So on
a server database the store reads the server's clock, once at start and again every
:data:`RESYNC` seconds, and carries it forward in between on this process's monotonic
clock: a call costs what reading the process's clock costs, every app server's
``now`` is the server's to within a round trip and the drift of a minute, and a
process clock that is wrong or that jumps changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

__all__ = ["RESYNC", "RETRY", "ServerClock", "utc_now"]

logger = logging.getLogger("sauce_sql.clocks")

#: Seconds between two readings of the server's clock.
RESYNC = 60.0
#: Seconds before a reading that failed (the server down) is tried again; meanwhile
#: the last reading is carried forward.
RETRY = 5.0


def utc_now() -> datetime:
    """The process's own clock, as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class ServerClock:
    """The database server's clock, read now and then, carried forward in between.

    ``read()`` returns the server's current time (an aware datetime) or raises.
    """

    def __init__(self, read: Callable[[], datetime]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._base: datetime | None = None
        self._base_at = 0.0
        self._next = 0.0

    def sync(self) -> None:
        """Read the server's clock now (raises what ``read`` raises)."""
        before = time.monotonic()
        server = self._read()
        after = time.monotonic()
        with self._lock:
            # The reading was taken somewhere in the round trip: its middle.
            self._base, self._base_at = server, (before + after) / 2
            self._next = after + RESYNC

    def __call__(self) -> datetime:
        at = time.monotonic()
        if at >= self._next or self._base is None:
            self._resync(at)
        base = self._base
        assert base is not None
        return base + timedelta(seconds=at - self._base_at)

    def _resync(self, at: float) -> None:
        with self._lock:
            if at < self._next and self._base is not None:
                return  # another thread just did
            self._next = at + RETRY
        try:
            self.sync()
        except Exception:
            if self._base is None:
                raise
            # Carried forward until the server answers again; the operation that
            # goes on to the server will say what is wrong with it.
            logger.warning("cannot read the database server's clock", exc_info=True)


class AsyncServerClock(ServerClock):
    """The server's clock for an asyncio store: read in a task of the loop when a
    reading is due, carried forward meanwhile, so that reading now never waits.

    ``read()`` is a coroutine function returning the server's current time.
    """

    def __init__(self, read: Callable[[], Awaitable[datetime]]) -> None:
        super().__init__(self._never)
        self._read_async = read
        self._reading: asyncio.Task[None] | None = None

    @staticmethod
    def _never() -> datetime:
        raise AssertionError("an asyncio store's clock is read by sync() only")

    async def sync(self) -> None:  # type: ignore[override]
        """Read the server's clock now (raises what ``read`` raises)."""
        before = time.monotonic()
        server = await self._read_async()
        after = time.monotonic()
        with self._lock:
            self._base, self._base_at = server, (before + after) / 2
            self._next = after + RESYNC

    def _resync(self, at: float) -> None:
        with self._lock:
            if at < self._next:
                return
            self._next = at + RETRY
        if self._base is None or (self._reading is not None and not self._reading.done()):
            return
        self._reading = asyncio.get_running_loop().create_task(self._read_again())

    async def _read_again(self) -> None:
        try:
            await self.sync()
        except Exception:
            # Carried forward until the server answers again; the operations that go
            # on to the server will say what is wrong with it.
            logger.warning("cannot read the database server's clock", exc_info=True)
