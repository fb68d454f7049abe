"""The store's checkpoint thread: the write-ahead log stays bounded, the thread ends."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sauce_sql import Store
from sauce_sql.backends.sqlite import checkpoints
from sauce_sql.backends.sqlite import connections as sqlite_connections
from sauce_sql.backends.sqlite.executor import SQLiteExecutor

FRAME = 4096 + 24  # a page and its frame header


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sauce-sql-checkpoint"]


def test_the_log_stays_bounded_under_a_busy_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that never pauses still gets its log started over: the checkpoint
    thread pauses the process's writers for the last pass once the log is long."""
    monkeypatch.setattr(checkpoints, "RESTART_FRAMES", 512)
    # So that only the checkpoint thread can keep the log short.
    monkeypatch.setattr(sqlite_connections, "BACKSTOP_FRAMES", 1_000_000)
    path = tmp_path / "busy.db"
    store = Store(f"sqlite:///{path}", clean_interval=None).start()
    try:
        ids = [store.new_session().session_id for _ in range(3000)]
        for _ in range(3):
            for sid in ids:
                store.inc_sequence(sid, "view")
        log = path.with_name(path.name + "-wal").stat().st_size
    finally:
        store.close()
    # 12,000 writes of a few pages each append far more than 20,000 frames; the log
    # file never grows past what it held at its longest.
    assert log < 8000 * FRAME, f"the log grew to {log // FRAME} frames"


def test_writers_that_outrun_every_pass_are_paused_once_the_log_is_twice_as_long() -> None:
    """Passes that never catch up (each finds many new pages, as on a busy machine)
    pause the writers anyway once the log reaches OUTRUN_FACTOR x RESTART_FRAMES; short
    of that, they only try again at the next wake."""
    restart = checkpoints.RESTART_FRAMES
    grow = checkpoints.PAUSED_FRAMES + 1  # new pages each pass finds: never caught up

    def run(start: int) -> tuple[list[int], int]:
        log = [start]
        paused: list[int] = []

        def checkpoint() -> checkpoints.Outcome:
            log[0] += grow
            return (0, log[0], log[0])

        def pause() -> checkpoints.Outcome:
            paused.append(log[0])
            return (0, log[0], log[0])

        checkpointer = checkpoints.Checkpointer(checkpoint, pause, name="test-checkpoint")
        try:
            checkpointer._once()
        finally:
            checkpointer.stop()
        return paused, log[0]

    passes = checkpoints.CATCH_UP_PASSES + 1
    assert restart + passes * grow < checkpoints.OUTRUN_FACTOR * restart
    assert run(restart) == ([], restart + passes * grow)  # tries again at the next wake
    long_log = checkpoints.OUTRUN_FACTOR * restart
    assert run(long_log) == ([long_log + 2 * grow], long_log + 2 * grow)


def test_close_ends_the_checkpoint_thread(tmp_path: Path) -> None:
    """The thread starts with the writes and is gone once the store is closed."""
    store = Store(f"sqlite:///{tmp_path / 'c.db'}", clean_interval=None).start()
    try:
        sid = store.new_session().session_id
        for _ in range(checkpoints.CHECKPOINT_EVERY + 1):
            store.inc_sequence(sid, "view")
        executor = store._executor
        assert isinstance(executor, SQLiteExecutor)
        checkpointer = executor._checkpointer
        assert checkpointer is not None
        thread = checkpointer._thread
        assert thread.is_alive()
    finally:
        store.close()
    assert not thread.is_alive()


def test_an_in_memory_store_has_no_checkpoint_thread() -> None:
    """No log, no thread."""
    store = Store("sqlite://", clean_interval=None).start()
    try:
        sid = store.new_session().session_id
        for _ in range(checkpoints.CHECKPOINT_EVERY + 1):
            store.inc_sequence(sid, "view")
        assert not _checkpoint_threads()
    finally:
        store.close()
