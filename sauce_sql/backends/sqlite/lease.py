"""Processes that share a SQLite file: who else is there, and one cleanup at a time.

SQLite's busy handler is not fair between processes. A writer that finds the write
lock taken sleeps and tries again (every 100 ms once it has waited a while), while a
cleaner, its next batch ready, takes the lock back at once: one cleaning process kept
another's writers out for its whole round (0.45 s for 100k rows), and three, taking
turns, for up to 0.87 s. So, per file:

- **The cleanup lease.** A cleanup round holds it, as PostgreSQL's rounds hold an
  advisory lock: the background cleaner skips its round while another store (of any
  process) holds it, and a called ``cleanup()`` waits for it, at most the store's
  timeout, then cleans anyway (safe, only harder on the writers). N processes
  cleaning then cost the writers what one does.
- **Presence.** Every process with a store on the file says so, and a cleanup asks
  before each pause between batches whether another process is there: only then does
  it leave the write lock free between batches (cleanup.delete_expired), so that a
  process alone on its file cleans at full speed.

Both are POSIX record locks on one byte each of a file beside the database
(``<database>-sauce-cleanup``), on one descriptor per file per process, kept open
while a store of the process uses the file. The kernel lets them go when the process
ends, however it ends; they are not inherited by a forked child, which takes its own
presence again at once. (Record locks are per process: within one the lease is also
a plain lock, and nothing else in the process may open the file, as closing any
descriptor of it would let all the process's locks on it go.) Bytes 2 and 3 are the
writers' turns between processes (turns.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator

__all__ = [
    "LEASE_SUFFIX",
    "Handle",
    "acleanup_lease",
    "cleanup_lease",
    "enter",
    "handle",
    "holds_others",
    "key",
    "leave",
    "others_present",
    "unlock",
]

logger = logging.getLogger("sauce_sql.cleanup")

#: The lease file is the database's path with this added.
LEASE_SUFFIX = "-sauce-cleanup"

_PRESENCE, _LEASE = 0, 1  # the byte each lock is on (turns.py uses bytes 2 and 3)

# struct flock on Linux and the BSDs: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = "hhqqi"


class _File:
    """This process's hold on one database's lease file."""

    __slots__ = ("closed", "fd", "guard", "round", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        # The lease within the process (record locks do not keep threads apart).
        self.round = threading.Lock()
        # Closing the descriptor and letting a lock on it go exclude each other. Not
        # the module's lock: a fork holds that one while it waits for the writers'
        # SQLite work to end, and a writer lets its turn go inside that work.
        self.guard = threading.Lock()
        self.closed = False


_files: dict[str, _File] = {}
_lock = threading.Lock()


def _key(database: str) -> str:
    return os.path.realpath(database)


def key(database: str) -> str:
    """The name the file's locks go by in this process (its real path)."""
    return _key(database)


#: This process's hold on one lease file, as :func:`handle` gives it.
Handle = _File


def handle(key: str) -> Handle | None:
    """This process's hold on the lease file of the file :func:`key` named, while a
    store of the process uses it: the same object until the last store leaves (then
    ``closed``). Lock bytes of its ``fd``; never close it."""
    return _files.get(key)


def unlock(held: Handle, byte: int) -> None:
    """Let this process's lock on ``byte`` of ``held`` go, unless the file was left
    meanwhile: closing its descriptor let every lock go already, and the number may
    belong to another file by now."""
    with held.guard:
        if not held.closed:
            with contextlib.suppress(OSError):
                fcntl.lockf(held.fd, fcntl.LOCK_UN, 1, byte)


def enter(database: str) -> None:
    """A store of this process uses the SQLite file ``database`` (until :func:`leave`)."""
    key = _key(database)
    with _lock:
        held = _files.get(key)
        if held is None:
            try:
                fd = os.open(key + LEASE_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:  # a read-only directory, say: every process cleans, as before
                logger.debug("no cleanup lease beside %s", key, exc_info=True)
                return
            held = _files[key] = _File(fd)
            _be_present(held)
        held.users += 1


def leave(database: str) -> None:
    """A store of this process is done with ``database``."""
    with _lock:
        held = _files.get(_key(database))
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            del _files[_key(database)]
            with held.guard:
                held.closed = True
                os.close(held.fd)  # lets every lock of the process on it go


def _be_present(held: _File) -> None:
    with contextlib.suppress(OSError):
        fcntl.lockf(held.fd, fcntl.LOCK_SH, 1, _PRESENCE)


def others_present(database: str) -> bool:
    """Whether a store of another process uses ``database`` (False if unknown)."""
    held = _files.get(_key(database))
    return held is not None and holds_others(held.fd, _PRESENCE)


def holds_others(fd: int, byte: int) -> bool:
    """Whether another process holds a lock on ``byte`` of the lease file ``fd``."""
    query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0) + bytes(8)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return False
    # A process's own locks never conflict with its own: any conflict is another's.
    (kind,) = struct.unpack_from("h", answer)
    return bool(kind != fcntl.F_UNLCK)


def _try(held: _File) -> bool:
    if not held.round.acquire(blocking=False):
        return False
    try:
        fcntl.lockf(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _LEASE)
    except OSError:  # another process's round
        held.round.release()
        return False
    return True


def _let_go(held: _File) -> None:
    with contextlib.suppress(OSError):
        fcntl.lockf(held.fd, fcntl.LOCK_UN, 1, _LEASE)
    held.round.release()


@contextlib.contextmanager
def cleanup_lease(database: str, *, wait: float | None) -> Iterator[bool]:
    """Whether this round may clean the SQLite file ``database`` now.

    ``wait=None`` (the background cleaner): False at once if another round holds the
    lease. Otherwise wait up to ``wait`` seconds for it, then True regardless.
    """
    enter(database)
    try:
        held = _files.get(_key(database))
        if held is None:
            yield True
            return
        taken = _try(held)
        if not taken and wait is not None:
            deadline = time.monotonic() + wait
            pause = 0.005
            while not taken and time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
                taken = _try(held)
        try:
            yield taken or wait is not None
        finally:
            if taken:
                _let_go(held)
    finally:
        leave(database)


@contextlib.asynccontextmanager
async def acleanup_lease(database: str, *, wait: float | None) -> AsyncIterator[bool]:
    """:func:`cleanup_lease` for an event loop: the wait is awaited."""
    enter(database)
    try:
        held = _files.get(_key(database))
        if held is None:
            yield True
            return
        taken = _try(held)
        if not taken and wait is not None:
            deadline = time.monotonic() + wait
            pause = 0.005
            while not taken and time.monotonic() < deadline:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
                taken = _try(held)
        try:
            yield taken or wait is not None
        finally:
            if taken:
                _let_go(held)
    finally:
        leave(database)


def _after_in_child() -> None:
    # The child holds none of the parent's record locks, and a round under way in
    # the parent does not go on here: take presence again, free the in-process lease.
    global _lock
    _lock = threading.Lock()
    for held in _files.values():
        held.round = threading.Lock()
        held.guard = threading.Lock()
        _be_present(held)


# A fork waits for a file being entered or left, so the child sees the table whole.
os.register_at_fork(
    before=lambda: _lock.acquire(),
    after_in_parent=lambda: _lock.release(),
    after_in_child=_after_in_child,
)
