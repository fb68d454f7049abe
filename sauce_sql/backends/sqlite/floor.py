"""The write floor: which thread of a process writes to SQLite, and for how long.

SQLite lets one connection write at a time, and its busy handler makes a waiting
writer sleep for milliseconds instead of queueing, so threads writing through
connections of their own get less done together than one does alone, and single
calls wait up to half a second. Here a process's writers share one connection and
take turns on it in Python instead.

Handing the connection from one thread to another is what costs: a woken thread has
to be scheduled and then get the GIL, about 23 us on a 2-core machine (two threads
passing a lock back and forth), more than a whole write in WAL mode with
``synchronous=NORMAL`` (about 17 us). A turn per write would spend more time handing
over than writing; so does committing the writes of waiting threads for them (group
commit), since each of them must still be woken to return. So the thread that holds
the floor keeps it while it goes on writing in quick succession, and the others wait
in line, asleep, as with the starvation bound of Go's ``sync.Mutex``:

- A thread takes a free floor at once, and gives it back when it leaves with nobody
  waiting: alone, a write costs what the driver costs.
- A holder that left and came back within :data:`QUICK` keeps the floor for a slice
  while others wait: :data:`SLICE`, or less with a long line, so that a round of the
  whole line takes about :data:`ROUND`. A holder that writes only now and then hands
  the floor to the longest waiter as it leaves.
- Only the longest waiter (the head of the line) wakes once per :data:`SLICE`, to
  take the floor if its holder is not writing at that moment (it may never come back);
  if it is, the holder hands the floor over when it leaves. The others sleep until the
  floor is handed to them, they become the head, or their deadline passes: a long line
  costs no polling.
- A caller may give a deadline: a waiter still in line then leaves it and raises
  :class:`FloorTimeout`, so no wait in line outlasts its caller's bound.

So no call waits much more than a round of the line, and most writes pass no thread
handoff at all. With ``durability="full"`` an fsync per commit costs far
more than a handoff, and :mod:`sauce_sql.backends.sqlite.group_commit` shares commits instead.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["QUICK", "ROUND", "SLICE", "FloorTimeout", "WriteFloor"]

#: How long a holder keeps the floor while others wait (ns)...
SLICE = 1_000_000
#: ...but shorter with a long line, so that a turn of the whole line takes about this
#: long (ns) and no waiter waits much longer, however many threads there are.
ROUND = 4_000_000
#: A thread that comes back to write within this much time (ns) of leaving counts as
#: writing in quick succession, and keeps the floor for the rest of its slice.
QUICK = 200_000

T = TypeVar("T")

_clock = time.monotonic_ns


class FloorTimeout(Exception):
    """A caller's deadline passed while it waited in line; it left the line."""


class _Turn:
    """A thread waiting in line.

    Its lock is held while the thread sleeps; each release is one wake-up (the floor
    handed to it, or it became the head of the line), and ``token`` says, under the
    floor's mutex, whether a wake-up is pending, so that no lock is ever released twice.
    """

    __slots__ = ("granted", "head", "ident", "lock", "token")

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.granted = False
        self.head = False
        self.token = False
        self.lock = threading.Lock()
        self.lock.acquire()

    def wake(self) -> bool:
        """Mark a wake-up pending (the mutex is held); True if the lock is to be released."""
        if self.token:
            return False
        self.token = True
        return True


class WriteFloor:
    """Lets one thread at a time run writes, keeping the floor with a busy writer."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._line: collections.deque[_Turn] = collections.deque()
        self._holder: int | None = None
        self._writing = False
        self._since = 0
        self._quick = False
        # Per thread: when it last left the floor, to tell a busy writer from an
        # occasional one. Thread-local, so it goes away with the thread.
        self._local = threading.local()
        #: How many times the floor passed from one thread to another (handed over,
        #: or taken from a holder that went away).
        self.handoffs = 0
        #: How many times a waiter woke up to find the floor still not its own (a
        #: timed wait of the head of the line, mostly): a long line must not poll.
        self.idle_wakeups = 0

    def run(self, write: Callable[..., T], *args: object, deadline: float | None = None) -> T:
        """Run ``write(*args)`` holding the floor; return what it returns.

        ``deadline`` (``time.monotonic()`` seconds) bounds the wait in line: past it the
        caller leaves the line and gets :class:`FloorTimeout`, nothing run.
        """
        me = threading.get_ident()
        try:
            self._enter(me, deadline)
            result = write(*args)
        except BaseException:
            # Whatever failed or was interrupted (Ctrl-C may land anywhere in here),
            # hand the floor on at once. The plain store comes first because it cannot
            # be interrupted: a holder that is not writing is one the longest waiter
            # takes the floor from after a slice, even if _leave never runs.
            if self._holder == me:
                self._writing = False
            self._leave(me, keep=False)
            raise
        self._writing = False  # this thread holds the floor: nobody else sets it now
        self._leave(me, keep=True)
        return result

    def _enter(self, me: int, deadline: float | None) -> None:
        now = _clock()
        quick = now - getattr(self._local, "left", -QUICK) < QUICK
        handed: _Turn | None = None
        with self._mutex:
            holder = self._holder
            if holder is None or (
                holder == me and (not self._line or now - self._since < self._slice())
            ):
                if holder is None:
                    self._holder, self._since = me, now
                self._writing, self._quick = True, quick
                return
            if holder == me:
                # This thread's slice is over and others wait: the longest waiter goes
                # first, and this thread lines up behind the rest.
                handed = self._hand_over(now)
            turn = _Turn(me)
            turn.head = not self._line
            self._line.append(turn)
            head = self._new_head()
        if handed is not None:
            handed.lock.release()
        if head is not None:
            head.lock.release()
        self._wait(turn, deadline)
        self._quick = quick

    def _wait(self, turn: _Turn, deadline: float | None) -> None:
        """Sleep until the floor is handed over, taking it from an absent holder.

        The head of the line wakes once a slice, so that the floor handed over by a
        thread interrupted before waking anyone still moves on, and so that it takes
        the floor from a holder that is not writing (it kept the floor as it left, and
        may never come back). Everyone else sleeps until woken or out of time.
        """
        while True:
            if turn.head:
                timeout = SLICE / 1e9
                if deadline is not None:
                    timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
            elif deadline is not None:
                timeout = max(deadline - time.monotonic(), 0.0)
            else:
                timeout = -1
            woken = turn.lock.acquire(timeout=timeout)
            poke: _Turn | None = None
            timed_out = False
            with self._mutex:
                if woken:
                    turn.token = False
                if turn.granted:
                    return
                self.idle_wakeups += 1
                if not self._line or (self._line[0] is not turn and turn not in self._line):
                    # Taken out of the line by a hand-over that an interrupt cut short
                    # before it granted the floor: back to the front.
                    self._line.appendleft(turn)
                if self._line[0] is turn:
                    turn.head = True
                    if not self._writing:
                        self._line.popleft()
                        self._take(turn, _clock())
                        poke = self._new_head()
                if not turn.granted and deadline is not None and time.monotonic() >= deadline:
                    self._line.remove(turn)
                    poke = self._new_head()
                    timed_out = True
            if poke is not None:
                poke.lock.release()
            if timed_out:
                raise FloorTimeout
            if turn.granted:
                return

    def _new_head(self) -> _Turn | None:
        """The head of the line if it is to be told so now (the mutex is held)."""
        if not self._line:
            return None
        head = self._line[0]
        if head.head:
            return None
        head.head = True
        return head if head.wake() else None

    def _leave(self, me: int, *, keep: bool) -> None:
        """Give the floor up, or keep it (``keep``) for a thread writing in quick
        succession whose slice is not over; out of the line if still in it."""
        handed: _Turn | None = None
        now = _clock()
        self._local.left = now
        with self._mutex:
            if self._holder == me:
                self._writing = False
                if not self._line:
                    self._holder = None
                elif not (keep and self._quick) or now - self._since >= self._slice():
                    handed = self._hand_over(now)
            else:
                # Interrupted while waiting: leave the line, so nobody waits for us.
                for turn in self._line:
                    if turn.ident == me:
                        self._line.remove(turn)
                        break
                # Whoever is first in line now must know it is (an interrupt may
                # also have cut short the step that would have told it).
                handed = self._new_head()
        if handed is not None:
            handed.lock.release()

    def _slice(self) -> int:
        """How long the holder may keep the floor now (ns); the mutex is held."""
        return max(QUICK, min(SLICE, ROUND // len(self._line))) if self._line else SLICE

    def _hand_over(self, now: int) -> _Turn | None:
        """Give the floor to the longest waiter (the mutex is held); returns the turn
        to wake, if its wake-up is not pending already."""
        turn = self._line.popleft()
        self._take(turn, now)
        poke = self._new_head()
        if poke is not None:
            # Two threads to wake: the new holder here, the new head at once.
            poke.lock.release()
        return turn if turn.wake() else None

    def _take(self, turn: _Turn, now: int) -> None:
        turn.granted = True
        self._holder, self._since, self._writing = turn.ident, now, True
        self.handoffs += 1
