"""Group commit: the writers of one process share one SQLite connection and its commits.

SQLite lets one connection write at a time, and a writer that finds the database
locked sleeps in its busy handler instead of queueing, so threads writing through
their own connections get less done together than one does alone, and some wait for
long stretches. Here the writes of a process queue in Python instead, as in the write
queues of LevelDB and RocksDB: one writer at a time *leads*: it takes the writes queued
(up to :data:`MAX_GROUP`), runs them in one ``BEGIN IMMEDIATE`` transaction, commits
once, and hands each waiting writer its own result; then it goes on with the writes
queued meanwhile (a few groups at most, so that its own caller is not kept long) and
hands the lead to the next writer in the queue. One commit (one fsync with
``durability="full"``) then serves a whole group.

A write runs alone in autocommit when nobody leads, which costs exactly what the
driver costs. In a group, a statement that fails is undone by SQLite on its own
(statement journal) and the others go on; if the failure ended the whole transaction,
or the commit fails, every other write of the group runs again in a transaction of its
own, so that each caller gets its own result or its own error, never someone else's.

Interrupts (an exception raised by a signal handler: Ctrl-C, a request timeout) are
the interrupted caller's alone, wherever they land:

- A writer interrupted while it waits leaves the queue (its write not run), or, if a
  leader has taken its write already, lets it finish without waiting for it: either way
  it raises at once and nobody waits for it.
- A leader interrupted while it runs other callers' writes leaves them exactly as the
  database says: a group whose transaction is still open is rolled back and its writes
  go back to the front of the queue for the next leader; a committed one keeps its
  results. Only writes of other callers run in a transaction, so whether each one was
  applied is always known. Then the lead passes on, and the leader raises.

Every write has a deadline: it fails with the executor's "locked" error if it is still
queued then, and a leader waits for another process's lock only until the earliest
deadline of its group, failing the writes whose time is up and retrying the rest.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sauce_sql.backends.sqlite import forks
from sauce_sql.errors import StoreUnavailable

__all__ = ["LEAD_ROUNDS", "MAX_GROUP", "GroupCommitter"]

logger = logging.getLogger("sauce_sql.group_commit")

#: The most writes one transaction commits; bounds the leader's own wait.
MAX_GROUP = 64
#: How many groups one leader commits in a row before it hands over and returns.
LEAD_ROUNDS = 8
#: How often a waiting writer checks its write's state without being woken: a backstop
#: for a wake-up lost to an interrupt that landed between a state change and its
#: wake-up (s).
_RECHECK = 0.05

Outcome = Any
Run = Callable[[Any, Any, Any], Outcome]
"""Runs ``(connection, prepared, parameters)`` and returns the result or raises."""

_QUEUED, _TAKEN, _DONE = 0, 1, 2


class _Write:
    __slots__ = (
        "deadline",
        "error",
        "lead",
        "parameters",
        "prepared",
        "result",
        "state",
        "token",
        "wake",
    )

    def __init__(self, prepared: Any, parameters: Any, deadline: float) -> None:
        self.prepared = prepared
        self.parameters = parameters
        self.deadline = deadline
        self.result: Outcome = None
        self.error: BaseException | None = None
        self.state = _QUEUED
        # Set (under the mutex) when the lead is handed to this writer.
        self.lead = False
        # Held while the writer waits; each release is one wake-up, and ``token`` says,
        # under the mutex, that one is pending, so the lock is never released twice.
        self.token = False
        self.wake = threading.Lock()
        self.wake.acquire()

    def outcome(self) -> Outcome:
        if self.error is not None:
            raise self.error
        return self.result

    def woken(self) -> bool:
        """Mark a wake-up pending (mutex held); True if the lock is to be released."""
        if self.token:
            return False
        self.token = True
        return True


class GroupCommitter:
    """Queues the writes of a process's threads and commits them in groups.

    ``connection()`` returns the held autocommit connection (``isolation_level=None``)
    and ``run`` executes one statement on it, raising the store's own errors.
    ``error`` is the driver's base error class. ``bound(deadline)`` makes the connection
    wait for another process's write lock only until ``deadline``, raising ``locked()``
    if it has passed. ``lock`` is held while the
    connection is in use, so that other users of the same connection (the reads of an
    in-memory database) can take turns with the writers.
    """

    def __init__(
        self,
        connection: Callable[[], Any],
        run: Run,
        lock: threading.Lock,
        *,
        bound: Callable[[float], None],
        locked: Callable[[], StoreUnavailable],
        unavailable: Callable[[BaseException], StoreUnavailable],
        error: type[Exception],
        turn: Callable[[float], bool] = lambda deadline: False,
        give: Callable[[], None] = lambda: None,
    ) -> None:
        self._connection = connection
        # The process's turn among the processes on the file (turns.py): True if
        # taken, then given back after the commit; raises locked() at the deadline.
        self._turn = turn
        self._give = give
        # The driver's errors: only they are a write's outcome; anything else raised
        # meanwhile (an interrupt) belongs to the thread it was raised in.
        self._error = error
        self._run = run
        self._bound = bound
        self._locked = locked
        self._unavailable = unavailable
        self.lock = lock
        self._mutex = threading.Lock()
        self._queue: collections.deque[_Write] = collections.deque()
        # The write whose caller leads now, and the group it has taken (under _mutex).
        self._leader: _Write | None = None
        self._taken: list[_Write] = []
        # The writes of the transaction open now, if any (the writer's lock is held).
        self._open: list[_Write] = []
        #: How many transactions committed more than one write, and how many writes
        #: they held: the benchmark reports the mean group size from these.
        self.groups = 0
        self.grouped_writes = 0

    def write(self, prepared: Any, parameters: Any, deadline: float) -> Outcome:
        """Run one write; return once it is committed, with its result or its error.

        ``deadline`` (``time.monotonic()`` seconds) bounds its wait, in the queue and
        for another process's lock.
        """
        mine = _Write(prepared, parameters, deadline)
        try:
            with self._mutex:
                if self._leader is None:
                    # Nobody leads: the common case, kept short.
                    mine.lead, mine.state = True, _TAKEN
                    self._leader, self._taken = mine, [mine]
                else:
                    self._queue.append(mine)
            if not mine.lead:
                self._wait(mine)
                if mine.state == _DONE:
                    return mine.outcome()
                with self._mutex:
                    self._take()
            self._lead(mine)
        except BaseException:
            self._interrupted(mine)
            raise
        return mine.outcome()

    # -- waiting --------------------------------------------------------------------

    def _wait(self, mine: _Write) -> None:
        """Sleep until the write is done or the lead is handed here; a write still
        queued at its deadline leaves the queue with the locked error."""
        while True:
            left = mine.deadline - time.monotonic()
            woken = mine.wake.acquire(timeout=min(max(left, 0.0), _RECHECK))
            with self._mutex:
                if woken:
                    mine.token = False
                if mine.state == _DONE or mine.lead:
                    return
                if mine.state == _QUEUED and time.monotonic() >= mine.deadline:
                    self._queue.remove(mine)
                    mine.state, mine.error = _DONE, self._locked()
                    return

    def _interrupted(self, mine: _Write) -> None:
        """The caller was interrupted (or its write failed, when this does nothing):
        its write leaves the queue unrun; if it was leading, the group it had taken is
        set right and the lead passes on, so nobody waits for the interrupted thread."""
        wakes: list[_Write] = []
        with self._mutex:
            if mine.state == _QUEUED:
                self._queue.remove(mine)
                mine.state = _DONE
                if mine.lead:
                    wakes += self._pass_lead()
                leading = False
            else:
                leading = self._leader is mine
        if leading:
            forks.inside()
            try:
                with self.lock:
                    undone = self._open if self._roll_back() else []
                    self._open = []
            finally:
                forks.outside()
            with self._mutex:
                for write in reversed(self._taken):
                    if write is mine or write.state == _DONE:
                        continue
                    if write in undone or (write.result is None and write.error is None):
                        # Not applied: the next leader runs it.
                        write.result, write.error = None, None
                        write.state = _QUEUED
                        if write not in self._queue:
                            self._queue.appendleft(write)
                    else:
                        # Applied (committed) or failed on its own: it has its outcome.
                        write.state = _DONE
                        if write.woken():
                            wakes.append(write)
                self._taken = []
                wakes += self._pass_lead()
        for write in wakes:
            write.wake.release()

    def _roll_back(self) -> bool:
        """Roll back an open transaction of the writer's; True if there was one (its
        writes are then not applied, even if the rollback itself failed)."""
        try:
            connection = self._connection()
        except StoreUnavailable:
            return False  # no connection, so no transaction open on it
        if not connection.in_transaction:
            return False
        try:
            connection.rollback()
        except self._error:
            logger.warning("rollback after an interrupt failed", exc_info=True)
        return True

    # -- leading --------------------------------------------------------------------

    def _take(self) -> None:
        """Take the next group, the writes at the front of the queue (mutex held).

        Each write is in ``_taken`` before it leaves the queue, so that an interrupt
        landing anywhere in here leaves no write in neither.
        """
        group: list[_Write] = []
        self._taken = group
        while self._queue and len(group) < MAX_GROUP:
            write = self._queue[0]
            group.append(write)
            write.state = _TAKEN
            self._queue.popleft()

    def _pass_lead(self) -> list[_Write]:
        """Hand the lead to the first queued writer, or end leading (mutex held);
        returns the writer to wake, if any."""
        if not self._queue:
            self._leader = None
            return []
        head = self._queue[0]
        head.lead = True
        self._leader = head
        return [head] if head.woken() else []

    def _lead(self, mine: _Write) -> None:
        """Commit the group taken, then the groups queued meanwhile, a few rounds at
        most; then pass the lead on.

        The leader goes on with the writes queued meanwhile rather than waking one of
        them to lead: it is running already, and a woken thread first has to be
        scheduled and get the GIL, which costs more than a small write.
        """
        for round_ in range(LEAD_ROUNDS):
            forks.inside()
            try:
                with self.lock:
                    self._commit(self._taken, mine)
            finally:
                forks.outside()
            wakes = []
            with self._mutex:
                for write in self._taken:
                    write.state = _DONE
                    if write is not mine and write.woken():
                        wakes.append(write)
                if round_ == LEAD_ROUNDS - 1 or not self._queue:
                    self._taken = []
                    wakes += self._pass_lead()
                    last = True
                else:
                    self._take()
                    last = False
            for write in wakes:
                write.wake.release()
            if last:
                return

    # -- running --------------------------------------------------------------------

    def _commit(self, group: list[_Write], mine: _Write) -> None:
        """Run ``group``'s writes; each ends with its result or its own error."""
        try:
            connection = self._connection()
        except StoreUnavailable as exc:
            self._fail_all(group, exc)
            return
        if group == [mine]:
            # The leader's own write, alone: autocommit, as cheap as the driver.
            try:
                taken = self._turn(mine.deadline)
                try:
                    self._bound(mine.deadline)
                    mine.result = self._run(connection, mine.prepared, mine.parameters)
                finally:
                    if taken:
                        self._give()
            except StoreUnavailable as exc:
                mine.error = exc
            return
        pending = list(group)
        while pending:
            earliest = min(write.deadline for write in pending)
            try:
                taken = self._turn(earliest)
            except StoreUnavailable:
                pending = self._time_out(pending)
                continue
            try:
                try:
                    self._bound(earliest)
                except StoreUnavailable:
                    pending = self._time_out(pending)
                    continue
                if self._transaction(connection, pending, together=True):
                    return
            finally:
                if taken:
                    self._give()
            pending = self._time_out(pending)

    def _time_out(self, writes: list[_Write]) -> list[_Write]:
        """Fail the writes whose deadline has passed; the rest go on."""
        now = time.monotonic()
        left = []
        for write in writes:
            if write.deadline <= now:
                write.error = self._locked()
            else:
                left.append(write)
        return left

    def _transaction(self, connection: Any, writes: list[_Write], *, together: bool) -> bool:
        """Run ``writes`` in one ``BEGIN IMMEDIATE`` transaction; True once every one of
        them has its outcome, False if the lock could not be had (nothing run)."""
        cursor = connection.cursor()
        try:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                self._open = writes
            except self._error as exc:
                if _is_busy(exc):
                    # Locked by another process until the deadline: the caller
                    # retries the writes whose time is not up.
                    return False
                for write in writes:
                    write.error = self._unavailable(exc)
                    write.error.__cause__ = exc
                return True
            for index, write in enumerate(writes):
                try:
                    write.result = self._run(connection, write.prepared, write.parameters)
                except StoreUnavailable as exc:
                    write.error = exc
                    if not connection.in_transaction:
                        # This failure rolled the whole transaction back (SQLITE_FULL,
                        # SQLITE_IOERR, a trigger's RAISE(ROLLBACK)): the writes before
                        # it are undone, so they and the ones after it run again alone.
                        self._open = []
                        self._redo(connection, writes[:index] + writes[index + 1 :])
                        return True
            try:
                cursor.execute("COMMIT")
                self._open = []
            except self._error:
                # Nothing of the group is committed, so nothing runs twice by running
                # every write again on its own.
                if connection.in_transaction:
                    connection.rollback()
                self._open = []
                if not together:
                    raise
                self._redo(connection, [w for w in writes if w.error is None])
                return True
        finally:
            cursor.close()
        if together and len(writes) > 1:
            self.groups += 1
            self.grouped_writes += len(writes)
        return True

    def _redo(self, connection: Any, writes: list[_Write]) -> None:
        for write in writes:
            write.result, write.error = None, None
        for write in writes:
            try:
                if not self._transaction(connection, [write], together=False):
                    write.error = self._locked()
            except self._error as exc:
                write.result, write.error = None, self._unavailable(exc)
                write.error.__cause__ = exc

    def _fail_all(self, group: list[_Write], exc: StoreUnavailable) -> None:
        # The others raise copies: one exception object raised in several threads at
        # once would collect all their tracebacks.
        group[0].error = exc
        for write in group[1:]:
            write.error = StoreUnavailable(str(exc))
            write.error.__cause__ = exc.__cause__ or exc


def _is_busy(exc: Exception) -> bool:
    """Whether a driver error says the database is locked by another connection."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text
