"""Copying a SQLite file's write-ahead log into the database, beside the writers.

In WAL mode a commit appends the pages it changed to the log, and by default the
commit that finds the log past 1000 pages then copies them into the database, in the
caller's time: measured with one writer incrementing random sessions, those
checkpoints took 40% of the writer's time and made its slowest calls. Here a thread
of the store's does it instead, on a reader connection: a PASSIVE checkpoint takes
no write lock, and the driver lets go of the GIL while it runs, so the copying goes on
beside the writes (on another core, where there is one).

The log starts over from its beginning only when a writer begins while every frame of
it has been copied, a moment that never comes while writers are busy all the time:
the log would grow without end, and each lookup in it gets slower. So once it passes
:data:`RESTART_FRAMES`, the thread catches up with the writers pass by pass, then runs
the last pass with this process's writers paused (the few frames appended meanwhile
and two fsyncs, so the disk's fsync time: see benchmarks/README.md on what writers
wait for during archiving), and the next write starts the log over. Writers that
outrun every pass (a busy machine) are paused for a longer last pass once the log
reaches :data:`OUTRUN_FACTOR` times that size. Each
connection's own automatic checkpoint stays, at :data:`BACKSTOP_FRAMES`, for when
this thread cannot keep up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = [
    "BACKSTOP_FRAMES",
    "CATCH_UP_PASSES",
    "CHECKPOINT_EVERY",
    "OUTRUN_FACTOR",
    "PAUSED_FRAMES",
    "LOG_SIZE_LIMIT",
    "RESTART_FRAMES",
    "Checkpointer",
]

logger = logging.getLogger("sauce_sql.checkpoints")

#: Writes between two checkpoints: a few pages each, so about the 1000 pages at which
#: SQLite would checkpoint by itself.
CHECKPOINT_EVERY = 256
#: Log size (pages) past which the writers are paused for the log to start over.
RESTART_FRAMES = 4096
#: A connection's own automatic checkpoint (pages), for when the thread falls behind.
BACKSTOP_FRAMES = 16384
#: The size (bytes) a log file is cut back to when it starts over.
LOG_SIZE_LIMIT = 64 * 1024 * 1024
#: The writers are paused only once a pass found at most this many new pages...
PAUSED_FRAMES = 512
#: ...within this many passes of catching up (a cleanup writing fast may outrun them;
#: the next wake tries again)...
CATCH_UP_PASSES = 4
#: ...unless the log has reached this many times :data:`RESTART_FRAMES`: then the
#: writers are paused for the last pass however much it has to copy, or on a busy
#: machine writers that always outrun the passes would grow the log to the backstop,
#: whose checkpoint runs in a writer's own time.
OUTRUN_FACTOR = 2

Outcome = tuple[int, int, int] | None
"""What ``PRAGMA wal_checkpoint`` says: busy, pages in the log, pages copied; None if
the checkpoint could not run (the database is unavailable)."""


class Checkpointer:
    """A daemon thread that checkpoints when woken, until stopped.

    ``checkpoint`` runs one PASSIVE checkpoint beside the writers; ``paused`` runs one
    while this process's writers wait.
    """

    def __init__(
        self,
        checkpoint: Callable[[], Outcome],
        paused: Callable[[], Outcome],
        name: str,
    ) -> None:
        self._checkpoint = checkpoint
        self._paused = paused
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask for a checkpoint soon."""
        self._wake.set()

    def stop(self) -> None:
        """End the thread and wait for it (a checkpoint under way is finished first)."""
        self._stopped = True
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stopped:
                return
            self._wake.clear()
            try:
                # Its SQLite work is announced, so a fork waits for it (forks.py).
                self._once()
            except Exception:
                # Best effort: the backstop keeps the log bounded; try again next time.
                logger.exception("background checkpoint failed")

    def _once(self) -> None:
        outcome = self._checkpoint()
        for _ in range(CATCH_UP_PASSES):
            if outcome is None or outcome[1] < RESTART_FRAMES or self._stopped:
                return
            # Another pass copies what was appended during the last one; once that
            # is little, the writers are paused for the rest, which is then quick.
            again = self._checkpoint()
            if again is None:
                return
            if again[1] - outcome[1] <= PAUSED_FRAMES or again[1] >= OUTRUN_FACTOR * RESTART_FRAMES:
                # Only if that pass could copy every page: when a reader still reads
                # old pages, the log cannot start over anyway.
                if again[1] >= RESTART_FRAMES and again[2] >= again[1]:
                    self._paused()
                return
            outcome = again
