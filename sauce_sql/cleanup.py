"""Deleting expired sessions: the batched delete and the background cleaner thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from sauce_sql.connections import Executor
from sauce_sql.prepared import Prepared

__all__ = ["BATCH_ROWS", "Cleaner", "delete_expired"]

logger = logging.getLogger("sauce_sql.cleanup")

# Rows per DELETE: small enough that a batch holds SQLite's write lock for a few
# milliseconds, so writers queued behind it are not stalled.
BATCH_ROWS = 2000


def delete_expired(executor: Executor, statement: Prepared, now: datetime) -> int:
    """Delete every row expired at ``now``, batch by batch; return how many went."""
    deleted = 0
    while True:
        _, count = executor.write(statement, {"now": now, "batch": BATCH_ROWS})
        deleted += count
        if count < BATCH_ROWS:
            return deleted


class Cleaner:
    """A daemon thread that calls ``clean()`` every ``interval`` seconds until stopped.

    A failing cleanup is logged and tried again at the next tick: a database outage
    must not end the thread.
    """

    def __init__(self, clean: Callable[[], int], interval: float, name: str) -> None:
        self._clean = clean
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Wake the thread, ask it to end, and wait until it has."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                deleted = self._clean()
            except Exception:
                logger.exception("cleanup failed; trying again in %s s", self._interval)
            else:
                logger.log(
                    logging.INFO if deleted else logging.DEBUG,
                    "cleanup deleted %d expired sessions",
                    deleted,
                )
