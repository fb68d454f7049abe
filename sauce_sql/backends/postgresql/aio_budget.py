"""An asyncio store's budget of server connections, handed out longest waiter first.

The twin of :mod:`~sauce_sql.backends.postgresql.budget` for one event loop: at most
``size`` connections are out or open at once, up to ``keep_idle`` of them wait
between calls, and a connection given back goes straight to the task that has waited
longest (a newcomer never takes it first). A task that finds an idle connection and
nobody in line takes it without awaiting anything, which is the path of nearly every
call; a semaphore beside an idle list costs a coroutine and a second lookup there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Generic, TypeVar, cast

from sauce_sql.backends.postgresql.aio_watchdog import AsyncWatchdog
from sauce_sql.backends.postgresql.budget import BudgetSpent

__all__ = ["AsyncBudget"]

T = TypeVar("T")

# What a waiter's future is given when its deadline passes in line.
_EXPIRED = object()


class AsyncBudget(Generic[T]):
    """Connections of type ``T`` lent to one task at a time, at most ``size`` at once.

    :meth:`take_idle` gives an idle connection at once, or None (then :meth:`take`).
    :meth:`take` gives an idle connection or None (the caller may open one, and gives
    back None if it could not, or closed it), waiting in line for either until a
    deadline. :meth:`give_back` hands a connection (or that right) to the longest
    waiter, else keeps it idle, else returns it for closing. Use it from one loop.
    """

    def __init__(self, size: int, keep_idle: int) -> None:
        self.size = size
        self.keep_idle = keep_idle
        self._idle: list[T] = []
        # Connections open or being opened, idle ones included.
        self._counted = 0
        self._line: deque[asyncio.Future[Any]] = deque()
        self._deadlines: AsyncWatchdog[asyncio.Future[Any]] = AsyncWatchdog(self._expire)

    @property
    def waiting(self) -> int:
        """How many tasks are waiting in line."""
        return len(self._line)

    def take_idle(self) -> T | None:
        """The most recently used idle connection if nobody waits in line, else None."""
        if self._idle and not self._line:
            return self._idle.pop()
        return None

    def peek_idle(self) -> T | None:
        """What :meth:`take_idle` would hand out next, left where it is."""
        if self._idle and not self._line:
            return self._idle[-1]
        return None

    async def take(self, deadline: float) -> T | None:
        """An idle connection or None (open one), waiting in line until ``deadline``
        (``loop.time()``) for either; raises :class:`BudgetSpent` when none came free."""
        if not self._line:
            if self._idle:
                return self._idle.pop()
            if self._counted < self.size:
                self._counted += 1
                return None
        waiter = asyncio.get_running_loop().create_future()
        self._line.append(waiter)
        self._deadlines.watch(waiter, deadline)
        try:
            got = await waiter
        except BaseException:
            # Cancelled in line: leave it, passing on whatever was handed over just
            # before (the future then holds it).
            self._deadlines.forget(waiter)
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is not _EXPIRED:
                    self._pass_on(handed)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):  # served and skipped already
                    self._line.remove(waiter)
            raise
        self._deadlines.forget(waiter)
        if got is _EXPIRED:
            raise BudgetSpent
        return cast("T | None", got)

    def _expire(self, waiter: asyncio.Future[Any]) -> None:
        """``waiter``'s deadline passed while it was in line."""
        if not waiter.done():
            self._line.remove(waiter)
            waiter.set_result(_EXPIRED)

    def _pass_on(self, item: T | None) -> None:
        """Give back what a cancelled waiter was handed. The budget cannot close a
        connection, so one that finds the idle list full is kept idle beyond it."""
        if not self._serve_next(item):
            if item is None:
                self._counted -= 1
            else:
                self._idle.append(item)

    def give_back(self, item: T | None) -> T | None:
        """Hand ``item`` (None: a connection closed or never opened) to the longest
        waiter, or keep it idle; returns it when the caller must close it instead."""
        if self._line and self._serve_next(item):
            return None
        if item is None:
            self._counted -= 1
            return None
        if len(self._idle) < self.keep_idle:
            self._idle.append(item)
            return None
        self._counted -= 1
        return item

    def _serve_next(self, item: T | None) -> bool:
        """Hand ``item`` to the longest waiter still waiting, if any."""
        line = self._line
        while line:
            waiter = line.popleft()
            if not waiter.done():  # a cancelled one leaves the line as it wakes
                waiter.set_result(item)
                return True
        return False

    def drain(self) -> list[T]:
        """Take every idle connection out of the budget, for closing."""
        idle, self._idle = self._idle, []
        self._counted -= len(idle)
        return idle
