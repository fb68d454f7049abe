"""Turns between processes writing to one SQLite file.

Within a process the writers of a file queue on one write path (floor.py,
group_commit.py, sharing.py), and only the head of that line asks SQLite for its
write lock. Between processes SQLite has no queue: a head that finds the lock taken
sleeps in the busy handler (up to 100 ms a time once it has waited a while) and tries
again, while the holder's process, already running, takes the lock back at once. With
8 processes x 3 threads and ``durability="full"`` the slowest calls took 3.4-4.9 s.

So while another process uses the file (lease.py's presence lock says so) the head
takes its process's *turn* before it begins a write and gives it back once it has
committed: a POSIX record lock on byte :data:`_TURN` of the lease file, through a
*gate*, a lock on byte :data:`_GATE` held only while waiting for the turn. A process
that just gave the turn back finds the gate held by the process waiting next and
waits behind it, so it cannot take the turn straight back; the waiters blocked on the
gate are all woken when it opens, by the kernel, the moment it opens, with no
backoff sleep.

The waits keep the call's deadline. A head first tries both locks without blocking
(no thread, a few syscalls); if it must wait, a locker thread of the file's waits in
the kernel (``F_SETLKW``) and hands the turn to the head, which waits for it only
until its deadline. A turn the locker gets after the head gave up is given back at
once. One head of the process at a time takes the turn (a mutex per file), which also
makes the stores of one process on the file that do not share a write path (another
durability, an application's own engine, AsyncStore's inline writes) take turns.

A process writing flat out keeps its turn for a short *slice*, so that it does not
hand the file over (a wake-up of another process, on another CPU or not) after every
transaction: its next head takes the kept turn with no system call. Only a write that
began within :data:`LINGER` seconds of the process's last one keeps the turn when it
is done; one write now and then hands it on at once, as a kept turn would make the
others wait for nothing. The slice ends :data:`SLICE` seconds after the turn was
taken, or :data:`LINGER` after the process's last write, whichever comes first; the
locker thread gives a kept turn back then, and a head that finds its slice over gives
it back and queues behind the other processes like any other. Handing the turn over
after every transaction cost processes writing flat out most of their calls (the
figures are in benchmarks/README.md); a slice bounds what one process can take: the
others wait for at most a slice each, not for a process's whole backlog.

A process alone on the file takes no lock: whether others are there is asked again
at most every :data:`RECHECK` seconds. The kernel lets go of a dead process's locks,
however it died, and a forked child holds none of its parent's; it starts afresh.
SQLite's own lock still keeps the writes apart: a turn only orders the heads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time

from sauce_sql.backends.sqlite import lease

__all__ = ["RECHECK", "FileTurns", "TurnTimeout", "for_file"]

#: How long (s) a process keeps its answer to "is another process on the file?".
RECHECK = 0.1
#: The longest (s) a process keeps its turn from when it took it: what another process
#: waiting for the turn waits at most for each process ahead of it (plus the write
#: under way when the slice ends).
SLICE = 0.001
#: A turn is kept only by a process whose write began within this long (s) of its
#: last one's end (writing flat out, not one write now and then), and for no longer
#: than this after its last write: a process that stops lets the others go at once.
LINGER = 0.0002
#: How long (s) an idle locker thread stays before it ends.
_IDLE = 2.0
_PRESENCE, _GATE, _TURN = 0, 2, 3  # the bytes of the lease file (lease.py has 0 and 1)

_clock = time.monotonic


class TurnTimeout(Exception):
    """The caller's deadline passed while its process waited for its turn."""


def _lock(fd: int, byte: int, *, wait: bool) -> None:
    fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte)


def _unlock(fd: int, byte: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, byte)


class FileTurns:
    """This process's turns on one SQLite file."""

    def __init__(self, key: str) -> None:
        self.key = key
        #: Whether another process used the file when last asked, and when to ask
        #: again (``time.monotonic()``): a writer alone on its file reads only these.
        self.present = False
        self.recheck_at = 0.0
        #: How many turns had to be waited for (the locker thread's), how many came
        #: at once, and how many were the process's kept turn taken back.
        self.waited = 0
        self.at_once = 0
        self.kept = 0
        self._fresh()

    def _fresh(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._wanted = False  # the head waits for the locker's grant
        self._granted = False  # the locker holds the turn for the head
        self._busy = False  # the locker waits in the kernel
        self._thread: threading.Thread | None = None
        # The lease file the head's turn is on (None: granted with no lease file).
        self._held: lease.Handle | None = None
        # A turn kept between heads (the mutex guards these): the lease file it is on,
        # when its slice ends, when the last head gave a turn back, and whether the
        # head now holding the turn came within LINGER of that.
        self._kept: lease.Handle | None = None
        self._slice_end = 0.0
        self._given_at = 0.0
        self._in_a_row = False

    def needed(self) -> bool:
        """Whether another process uses the file (the answer may be RECHECK old)."""
        now = _clock()
        if now >= self.recheck_at:
            held = lease.handle(self.key)
            self.present = held is not None and lease.holds_others(held.fd, _PRESENCE)
            self.recheck_at = now + RECHECK
        return self.present

    def take(self, deadline: float) -> bool:
        """Take the process's turn if other processes use the file; True if taken
        (then :meth:`give` it back). Raises :class:`TurnTimeout` at ``deadline``."""
        if not self.needed():
            return False
        if not self._mutex.acquire(timeout=max(deadline - _clock(), 0.0)):
            raise TurnTimeout
        try:
            if self._resume(_clock()):
                return True
            held = lease.handle(self.key)
            if held is None:
                self._mutex.release()
                return False
            with self._cond:
                busy = self._busy
            if not busy and self._try(held.fd):
                self._began(held)
                self.at_once += 1
                return True
            self._began(self._wait(deadline))
            self.waited += 1
            return True
        except BaseException:
            self._mutex.release()
            raise

    def try_take(self) -> bool | None:
        """The turn without waiting: True if taken, None if not needed, False if it
        would have to wait (nothing taken)."""
        if not self.needed():
            return None
        if not self._mutex.acquire(blocking=False):
            return False
        try:
            if self._resume(_clock()):
                return True
            held = lease.handle(self.key)
            if held is None:
                self._mutex.release()
                return None
            with self._cond:
                busy = self._busy
            if not busy and self._try(held.fd):
                self._began(held)
                self.at_once += 1
                return True
        except BaseException:
            self._mutex.release()
            raise
        self._mutex.release()
        return False

    def give(self) -> None:
        """Give back the turn :meth:`take` (or :meth:`try_take`) returned True for: kept
        for the process's next head while its slice lasts, else let go."""
        try:
            held, self._held = self._held, None
            if held is not None:
                now = self._given_at = _clock()
                kept = (
                    self._in_a_row
                    and now < self._slice_end
                    and not held.closed
                    and self._keep(held)
                )
                if not kept:
                    self._kept = None
                    lease.unlock(held, _TURN)
        finally:
            self._mutex.release()

    def _began(self, held: lease.Handle | None) -> None:
        """A turn was taken on ``held``'s lease file: its slice starts now."""
        self._held = held
        self._slice_end = _clock() + SLICE

    def _resume(self, now: float) -> bool:
        """Take back the turn the process kept, if its slice lasts (the mutex is held);
        a turn whose slice is over is let go, for the caller to queue again."""
        # Whether this write follows the last one at once: only then is the turn kept
        # when it is given back.
        self._in_a_row = now - self._given_at < LINGER
        kept = self._kept
        if kept is None:
            return False
        if now < self._slice_end and not kept.closed:
            # Still kept while the head has it: its give() then only moves the linger.
            self._held = kept
            self.kept += 1
            return True
        self._kept = None
        lease.unlock(kept, _TURN)
        return False

    def _keep(self, held: lease.Handle) -> bool:
        """Keep the turn on ``held`` for the process's next head (the mutex is held);
        the locker thread lets it go when the slice or the linger ends. False if
        there is no locker thread to do that (none can be started): let it go now."""
        if self._kept is held:
            return True  # the locker looks at it already: no wake-up per write
        with self._cond:
            try:
                self._start_locker()
            except RuntimeError:  # no new thread (at interpreter exit, say)
                return False
            self._kept = held
            self._cond.notify_all()
        return True

    def _let_kept_go(self) -> float | None:
        """In the locker thread: let a kept turn go if its time is up; when to look
        again (None: not before a head keeps a turn again, which wakes the thread)."""
        if not self._mutex.acquire(blocking=False):
            # A head has the turn. Once the slice is over, the head's give() lets it
            # go itself; until then, look again when the slice ends.
            end = self._slice_end
            return end if self._kept is not None and _clock() < end else None
        try:
            kept = self._kept
            if kept is None:
                return None
            due = min(self._slice_end, self._given_at + LINGER)
            if _clock() < due:
                return due
            self._kept = None
            lease.unlock(kept, _TURN)
            return None
        finally:
            self._mutex.release()

    @staticmethod
    def _try(fd: int) -> bool:
        try:
            _lock(fd, _GATE, wait=False)
        except OSError:  # another process waits for the turn (or tries for it now)
            return False
        try:
            _lock(fd, _TURN, wait=False)
        except OSError:
            return False
        finally:
            _unlock(fd, _GATE)
        return True

    def _wait(self, deadline: float) -> lease.Handle | None:
        """Have the locker thread wait for the turn; the mutex is held."""
        with self._cond:
            self._wanted, self._granted = True, False
            taken = False
            try:
                self._start_locker()
                self._cond.notify_all()
                while not self._granted:
                    left = deadline - _clock()
                    if left <= 0:
                        raise TurnTimeout
                    self._cond.wait(left)
                taken = True
                return self._held
            finally:
                if not taken and self._granted and self._held is not None:
                    # Granted as an interrupt landed: nobody is to use it.
                    lease.unlock(self._held, _TURN)
                    self._held = None
                # No longer wanted: the locker gives back a turn it gets later.
                self._wanted = self._granted = False

    def _start_locker(self) -> None:
        """Start the locker thread if it is not running (``_cond`` is held)."""
        if self._thread is None:
            thread = threading.Thread(target=self._locker, name="sauce-sql-turns", daemon=True)
            thread.start()
            self._thread = thread

    def _locker(self) -> None:
        """Waits in the kernel for the turn whenever a head wants it, and lets a kept
        turn go when its time is up."""
        cond = self._cond
        while True:
            with cond:
                # Wanted and not yet granted: a turn granted is the head's until it
                # gives it back (the process's own lock would not stop this thread).
                while not self._wanted or self._granted:
                    look_again = self._let_kept_go()
                    if look_again is not None:
                        cond.wait(max(look_again - _clock(), 0.0))
                    elif not cond.wait(_IDLE) and not self._wanted and self._kept is None:
                        self._thread = None
                        return
                self._busy = True
            held = lease.handle(self.key)
            got = held is None
            if held is not None:
                try:
                    _lock(held.fd, _GATE, wait=True)
                    try:
                        _lock(held.fd, _TURN, wait=True)
                        got = True
                    finally:
                        _unlock(held.fd, _GATE)
                except OSError:
                    # EDEADLK: the kernel sees a cycle through this process's other
                    # files (a head holding a turn there). Not one: try again soon.
                    time.sleep(0.001)
            with cond:
                self._busy = False
                if got and self._wanted and not self._granted:
                    self._granted, self._held = True, held
                    cond.notify_all()
                elif got and held is not None:
                    lease.unlock(held, _TURN)  # the head gave up meanwhile


_files: dict[str, FileTurns] = {}
_registry = threading.Lock()


def for_file(database: str) -> FileTurns:
    """The turns of this process on the SQLite file ``database``."""
    key = lease.key(database)
    with _registry:
        turns = _files.get(key)
        if turns is None:
            turns = _files[key] = FileTurns(key)
        return turns


def _after_in_child() -> None:
    # The child holds none of the parent's record locks, and has no locker thread.
    global _registry
    _registry = threading.Lock()
    for turns in _files.values():
        turns._fresh()  # noqa: SLF001
        turns.recheck_at = 0.0


os.register_at_fork(after_in_child=_after_in_child)
