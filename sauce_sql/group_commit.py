"""Group commit: the writers of one process share one SQLite connection and its commits.

SQLite lets one connection write at a time, and a writer that finds the database
locked sleeps in its busy handler instead of queueing, so threads writing through
their own connections get less done together than one does alone, and some wait for
long stretches. Here the writes of a process queue in Python instead, as in the write
queues of LevelDB and RocksDB: the writer at the head of the queue (the *leader*) takes
every write queued behind it, runs them in one ``BEGIN IMMEDIATE`` transaction, commits
once, and hands each waiting writer its own result; then it goes on with the writes
queued meanwhile (a few groups at most, so that its own caller is not kept long).
One commit (one fsync with ``durability="full"``) then serves a whole group.

A write runs alone in autocommit when nobody else is queued, which costs exactly what
the driver costs. In a group, a statement that fails is undone by SQLite on its own
(statement journal) and the others go on; if the failure ended the whole transaction,
or the commit fails, every other write of the group runs again on its own, so that each
caller gets its own result or its own error, never someone else's.
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from typing import Any

from sauce_sql.errors import StoreUnavailable

__all__ = ["LEAD_ROUNDS", "MAX_GROUP", "GroupCommitter"]

#: The most writes one transaction commits; bounds the leader's own wait.
MAX_GROUP = 64
#: How many groups one leader commits in a row before it hands over and returns.
LEAD_ROUNDS = 8

Outcome = Any
Run = Callable[[Any, Any, Any], Outcome]
"""Runs ``(connection, prepared, parameters)`` and returns the result or raises."""


class _Write:
    __slots__ = ("done", "error", "parameters", "prepared", "result", "wake")

    def __init__(self, prepared: Any, parameters: Any) -> None:
        self.prepared = prepared
        self.parameters = parameters
        self.result: Outcome = None
        self.error: BaseException | None = None
        self.done = False
        # Held while the writer waits; released by the leader that finished its write
        # or made it the next leader. Only writers that have to wait get one.
        self.wake: threading.Lock | None = None

    def outcome(self) -> Outcome:
        if self.error is not None:
            raise self.error
        return self.result


class GroupCommitter:
    """Queues the writes of a process's threads and commits them in groups.

    ``connection()`` returns the held autocommit connection (``isolation_level=None``)
    and ``run`` executes one statement on it, raising the store's own errors.
    ``lock`` is held while the connection is in use, so that other users of the same
    connection (the reads of an in-memory database) can take turns with the writers.
    """

    def __init__(self, connection: Callable[[], Any], run: Run, lock: threading.Lock) -> None:
        self._connection = connection
        self._run = run
        self.lock = lock
        self._mutex = threading.Lock()
        self._queue: collections.deque[_Write] = collections.deque()
        #: How many transactions committed more than one write, and how many writes
        #: they held: the benchmark reports the mean group size from these.
        self.groups = 0
        self.grouped_writes = 0

    def write(self, prepared: Any, parameters: Any) -> Outcome:
        """Run one write; return once it is committed, with its result or its error."""
        mine = _Write(prepared, parameters)
        with self._mutex:
            self._queue.append(mine)
            if len(self._queue) > 1:
                wake = mine.wake = threading.Lock()
                wake.acquire()
            else:
                wake = None
        interrupted: BaseException | None = None
        if wake is not None:
            # Once queued, this write is the queue's: a leader may run it or hand over
            # to it at any moment, so the wait cannot be abandoned (an abandoned head
            # would stall every later writer). An interrupt (Ctrl-C) is raised after.
            while True:
                try:
                    wake.acquire()
                    break
                except BaseException as exc:
                    interrupted = exc
            if mine.done:
                if interrupted is not None:
                    raise interrupted
                return mine.outcome()
            # At the head of the queue: lead. Only the leader removes from the queue,
            # so the first len(group) entries stay put while it works.
            with self._mutex:
                group = list(itertools.islice(self._queue, MAX_GROUP))
        else:
            # Nobody was queued: the common case, kept short. Writers arriving from
            # now on queue behind this one and are led by the next leader.
            group = [mine]
        for _ in range(LEAD_ROUNDS):
            group = self._lead(group, mine)
            if not group:
                break
        else:
            self._hand_over()
        if interrupted is not None:
            raise interrupted
        return mine.outcome()

    def _lead(self, group: list[_Write], mine: _Write) -> list[_Write]:
        """Commit ``group``, wake its writers; return the next group to lead, if any.

        The leader goes on with the writes queued meanwhile rather than waking one of
        them to lead: it is running already, and a woken thread first has to be
        scheduled and get the GIL, which costs more than a small write.
        """
        following: list[_Write] = []
        completed = False
        try:
            with self.lock:
                self._run_group(group)
            completed = True
        finally:
            with self._mutex:
                for _ in group:
                    self._queue.popleft()
                if self._queue:
                    following = list(itertools.islice(self._queue, MAX_GROUP))
            for write in group:
                if write is mine:
                    continue
                if not write.done:
                    # The leader was interrupted before this write committed.
                    write.done = True
                    write.error = StoreUnavailable("the write was interrupted; nothing written")
                assert write.wake is not None
                write.wake.release()
            if following and not completed:
                # Interrupted: let the next writer lead instead.
                self._hand_over()
        return following

    def _hand_over(self) -> None:
        """Wake the writer at the head of the queue to lead."""
        with self._mutex:
            head = self._queue[0] if self._queue else None
        if head is not None:
            assert head.wake is not None
            head.wake.release()

    def _run_group(self, group: list[_Write]) -> None:
        try:
            connection = self._connection()
        except Exception as exc:
            # The others raise copies: one exception object raised in several threads
            # at once would collect all their tracebacks.
            group[0].error, group[0].done = exc, True
            for write in group[1:]:
                write.error = StoreUnavailable(str(exc))
                write.error.__cause__ = exc.__cause__ or exc
                write.done = True
            return
        if len(group) == 1:
            self._run_alone(connection, group)
            return
        try:
            self._run_together(connection, group)
        except BaseException:
            # Interrupted mid-group (KeyboardInterrupt, say): nothing of it committed.
            if connection.in_transaction:
                connection.rollback()
            raise

    def _run_alone(self, connection: Any, writes: list[_Write]) -> None:
        for write in writes:
            try:
                write.result = self._run(connection, write.prepared, write.parameters)
            except Exception as exc:
                write.error = exc
            write.done = True

    def _run_together(self, connection: Any, group: list[_Write]) -> None:
        cursor = connection.cursor()
        try:
            committed = self._commit_group(connection, cursor, group)
        finally:
            cursor.close()
        if committed:
            for write in group:
                write.done = True
            self.groups += 1
            self.grouped_writes += len(group)

    def _commit_group(self, connection: Any, cursor: Any, group: list[_Write]) -> bool:
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except Exception:
            # Locked by another process past the busy timeout, say: let each write
            # try on its own and report its own error.
            self._run_alone(connection, group)
            return False
        for index, write in enumerate(group):
            try:
                write.result = self._run(connection, write.prepared, write.parameters)
            except Exception as exc:
                write.error = exc
                if not connection.in_transaction:
                    # This failure rolled the whole transaction back (SQLITE_FULL,
                    # SQLITE_IOERR, a trigger's RAISE(ROLLBACK)): the writes before it
                    # are undone, so they and the ones after it run again alone.
                    write.done = True
                    self._redo(connection, group[:index] + group[index + 1 :])
                    return False
        try:
            cursor.execute("COMMIT")
        except Exception:
            # Nothing of the group is committed, so nothing runs twice by running
            # every write again on its own.
            if connection.in_transaction:
                connection.rollback()
            self._redo(connection, group)
            return False
        return True

    def _redo(self, connection: Any, writes: list[_Write]) -> None:
        for write in writes:
            write.result, write.error = None, None
        self._run_alone(connection, writes)
