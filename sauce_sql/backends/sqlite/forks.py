"""Forking safely while the store's threads use SQLite.

SQLite keeps process-wide state: its mutexes (the VFS's list of open files, the
allocator's), and per open file the locks this process holds on it and on its
write-ahead log index. ``fork()`` copies all of it into the child but only the thread
that forked: a mutex another thread held at that moment stays held in the child for
ever (a later ``sqlite3.connect`` there hangs), and the child believes it holds the
file locks that a parent's connection held mid-statement, which the kernel never gave
it (every later write there fails with "database is locked").

So the store's threads announce each stretch of SQLite work (a statement, a group's
transaction, opening or closing a connection) through :func:`inside` / :func:`outside`,
and a fork first waits until no such stretch is under way and lets no new one begin
until the fork is done. An announcement is a list append and a pop (atomic under the
GIL, no lock), so the hot path pays almost nothing. Stretches never nest: each is
announced once, at the place where the work begins.
"""

from __future__ import annotations

import os
import time

__all__ = ["FORK_WAIT", "inside", "outside"]

#: The longest a fork waits for the store's SQLite work under way to end (s). Each
#: stretch is bounded by the calls' own deadlines; this only keeps a wedged thread
#: from blocking a fork for ever.
FORK_WAIT = 30.0

_inside: list[None] = []
_forking = [False]


def inside() -> None:
    """A thread begins a stretch of SQLite work; waits while a fork is under way."""
    _inside.append(None)
    while _forking[0]:
        # Checked after announcing, so a fork that saw nobody inside cannot miss us.
        _inside.pop()
        time.sleep(0.0005)
        _inside.append(None)


def outside() -> None:
    """The stretch of SQLite work that :func:`inside` announced is over."""
    _inside.pop()


def _before_fork() -> None:
    _forking[0] = True
    deadline = time.monotonic() + FORK_WAIT
    while _inside and time.monotonic() < deadline:
        time.sleep(0.0002)


def _after_in_parent() -> None:
    _forking[0] = False


def _after_in_child() -> None:
    # The threads that were inside or waiting do not exist here.
    _inside.clear()
    _forking[0] = False


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
