"""AsyncStore on a SQLite file keeps the log's own work off the event loop: the write
that starts the write-ahead log over (and fsyncs its header) runs in a worker thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sauce_sql import AsyncStore
from sauce_sql.backends.sqlite.aio import AsyncSQLiteExecutor


def store_workers() -> list[str]:
    """The names of the store's worker threads alive (they start at their first job)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("sauce-sql-sqlite")]


def test_the_write_that_starts_the_log_over_runs_in_a_worker_thread(tmp_path: Path) -> None:
    """Writes with the write lock free run on the loop; once a checkpoint has copied the
    whole log, the next write (which starts the log over, an fsync) runs in a worker
    thread instead, and counts as any other."""

    async def main() -> None:
        url = f"sqlite:///{tmp_path / 'sessions.db'}"
        async with AsyncStore(url, clean_interval=None) as store:
            session = await store.new_session()
            for _ in range(20):
                await store.inc_sequence(session.session_id, "view")
            assert store_workers() == []  # every write so far ran on the loop
            executor = store._started()
            assert isinstance(executor, AsyncSQLiteExecutor)
            outcome = executor.sync.checkpoint()
            assert outcome is not None
            assert 0 < outcome[1] <= outcome[2]  # the whole log copied
            assert await store.inc_sequence(session.session_id, "view") == 21
            assert store_workers() != []
            assert not executor.sync.log_work_due

    asyncio.run(main())
