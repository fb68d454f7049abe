"""Many deadlines on one event loop, kept with one timer of the loop.

The asyncio store gives every call a deadline. A timer per call
(``loop.call_at`` then ``cancel``) costs about 5 us a call on a loop that is
otherwise idle: a handle built and pushed on the loop's heap, cancelled, and swept
out of it later; against a 35 us PostgreSQL lookup that is most of the store's
budget. Here a call's deadline is one dictionary entry, set as it starts and deleted
as it ends, and one timer of the loop stays set for the earliest deadline it has
seen. When that timer fires, what is past its deadline is handed to ``due`` and the
timer is set again for the earliest of the rest. Calls take the same time, so the
one timer, set for the first call, mostly fires once per timeout to find that call
long done and moves on to the call then in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["AsyncWatchdog"]

K = TypeVar("K", bound=Hashable)

logger = logging.getLogger("sauce_sql.watchdog")


class AsyncWatchdog(Generic[K]):
    """Deadlines (in ``loop.time()``) of keys; ``due(key)`` is called in the loop once
    a key's deadline has passed, unless the key was forgotten first.

    Use it from one event loop.
    """

    __slots__ = ("_due", "_timer", "_timer_at", "_watched")

    def __init__(self, due: Callable[[K], None]) -> None:
        self._due = due
        self._watched: dict[K, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        # When the timer fires (infinity when none is set).
        self._timer_at = math.inf

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, key: K, deadline: float) -> None:
        """Have ``due(key)`` called at ``deadline`` unless ``key`` is forgotten first."""
        self._watched[key] = deadline
        if deadline < self._timer_at:
            self._set_timer(deadline)

    def forget(self, key: K) -> None:
        """Take ``key``'s deadline back (nothing if it has none, or it has passed)."""
        self._watched.pop(key, None)

    def stop(self) -> None:
        """Forget every deadline and unset the timer."""
        self._watched.clear()
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        fired_at = self._timer_at
        self._timer, self._timer_at = None, math.inf
        # The loop runs a timer a clock tick early at most: what it was set for is due.
        now = max(asyncio.get_running_loop().time(), fired_at)
        watched = self._watched
        due = [key for key, deadline in watched.items() if deadline <= now]
        for key in due:
            del watched[key]
        if watched:
            self._set_timer(min(watched.values()))
        for key in due:
            try:
                self._due(key)
            except Exception:  # the other keys' deadlines hold all the same
                logger.exception("ending a call past its deadline failed")
