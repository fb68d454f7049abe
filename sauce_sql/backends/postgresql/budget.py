"""A store's budget of server connections, handed out longest waiter first.

At most ``size`` connections are out or open at once, and up to ``keep_idle`` of them
wait between calls, so that a burst of threads does not close and reopen server
sessions. A caller that finds the budget spent queues; a connection given back goes
straight to the longest waiter rather than to whichever thread asks next: left to an
operating system lock, the threads that just gave one back keep winning it again, and
others starve.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

__all__ = ["BudgetSpent", "ConnectionBudget"]

T = TypeVar("T")


class BudgetSpent(Exception):
    """No connection came free within the time a caller could wait."""


class _Waiter(Generic[T]):
    """One caller in line: it sleeps on its own lock until it is handed a connection."""

    __slots__ = ("item", "served", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()
        self.item: T | None = None
        self.served = False


class ConnectionBudget(Generic[T]):
    """Connections of type ``T`` lent to one caller at a time, at most ``size`` at once.

    :meth:`take` gives an idle connection, or None: the caller may open one, and gives
    back None if it could not, or closed it. :meth:`give_back` hands a connection (or
    that right) to the longest waiter, else keeps it idle, else returns it for closing.
    """

    def __init__(self, size: int, keep_idle: int) -> None:
        self.size = size
        self.keep_idle = keep_idle
        self._lock = threading.Lock()
        # A plain list: append and pop are atomic, so the hot path can skip the lock.
        self._idle: list[T] = []
        # Connections open or being opened, idle ones included.
        self._counted = 0
        self._line: deque[_Waiter[T]] = deque()
        # Whether every connection given back with nobody waiting stays idle: then the
        # idle list needs no lock to stay within keep_idle.
        self._keeps_all = keep_idle >= size

    @property
    def waiting(self) -> int:
        """How many callers are waiting in line."""
        return len(self._line)

    def take(self, timeout: float) -> T | None:
        """An idle connection or None (open one), waiting up to ``timeout`` seconds in
        line for either; raises :class:`BudgetSpent` when none came free."""
        # The hot path takes no lock (two of them cost a microsecond a call): an idle
        # connection, the most recently used one, if nobody waits in line before us.
        if self._idle and not self._line:
            try:
                return self._idle.pop()
            except IndexError:  # another thread took the last one
                pass
        with self._lock:
            if self._idle and not self._line:
                return self._idle.pop()
            if self._counted < self.size:
                self._counted += 1
                return None
            waiter: _Waiter[T] = _Waiter()
            self._line.append(waiter)
            # give_back may have added one without the lock before it saw us queue.
            self._serve_from_idle()
            if waiter.served:
                return waiter.item
        try:
            served = waiter.wake.acquire(timeout=max(timeout, 0.0))
        except BaseException:
            # Interrupted in line (a signal handler's exception): leave the line, and
            # pass on whatever was handed over meanwhile.
            if self._leave(waiter):
                self._pass_on(waiter.item)
            raise
        if not served:
            if self._leave(waiter):
                # Served just as it gave up, with no time left to use it.
                self._pass_on(waiter.item)
            raise BudgetSpent
        return waiter.item

    def _leave(self, waiter: _Waiter[T]) -> bool:
        """Take ``waiter`` out of the line; returns whether it was served first."""
        with self._lock:
            if not waiter.served:
                self._line.remove(waiter)
            return waiter.served

    def _pass_on(self, item: T | None) -> None:
        """Give back what an interrupted waiter was handed. The budget cannot close a
        connection, so one that finds the idle list full is kept idle beyond it."""
        with self._lock:
            if not self._serve_next(item):
                if item is None:
                    self._counted -= 1
                else:
                    self._idle.append(item)

    def give_back(self, item: T | None) -> T | None:
        """Hand ``item`` (None: a connection closed or never opened) to the longest
        waiter, or keep it idle; returns it when the caller must close it instead."""
        if item is not None and self._keeps_all and not self._line:
            # The hot path, without the lock. A caller that queued meanwhile looks at
            # the idle list after queueing, and this looks at the line after adding to
            # it: one of the two sees the other.
            self._idle.append(item)
            if self._line:
                with self._lock:
                    self._serve_from_idle()
            return None
        with self._lock:
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

    def _serve_from_idle(self) -> None:
        """Hand idle connections to waiters, longest first (the lock is held)."""
        while self._line and self._idle:
            self._serve_next(self._idle.pop())

    def _serve_next(self, item: T | None) -> bool:
        """Hand ``item`` to the longest waiter, if any (the lock is held)."""
        if not self._line:
            return False
        waiter = self._line.popleft()
        waiter.item = item
        waiter.served = True
        waiter.wake.release()
        return True

    def drain(self) -> list[T]:
        """Take every idle connection out of the budget, for closing."""
        with self._lock:
            # Emptied in place: a connection given back meanwhile without the lock
            # lands in this same list, for the next drain.
            idle = []
            while self._idle:
                idle.append(self._idle.pop())
            self._counted -= len(idle)
        return idle
