"""Cleanup in time-bounded batches: it deletes every expired row and never a live one."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _support import admin, libpq_dsn, wait_for
from conftest import PG_URL, Backend, FakeClock, StoreFactory, make_backend

from sauce_sql import ReviveSession, Store, cleanup, ops
from sauce_sql.backends import backend_for
from sauce_sql.backends.base import Result
from sauce_sql.prepared import Prepared

WAIT = 10.0  # seconds; only reached when something is broken


def test_cleanup_in_many_batches_deletes_every_expired_row(
    make_store: StoreFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tiny batches, cleanup still deletes exactly the expired rows."""
    monkeypatch.setattr(cleanup, "MIN_BATCH_ROWS", 3)
    monkeypatch.setattr(cleanup, "MAX_BATCH_ROWS", 5)
    store = make_store(session_max_age=60)
    expired = [store.new_session().session_id for _ in range(23)]
    clock.advance(120)
    live = [store.new_session().session_id for _ in range(7)]
    assert store.cleanup() == len(expired)
    assert all(store.session_exists(sid) for sid in live)
    assert store.cleanup() == 0


@pytest.mark.parametrize("keep_history", [False, True])
@pytest.mark.sync_only("pauses a cleanup between batches by patching the sync executor's write")
def test_rows_revived_during_cleanup_survive(
    make_store: StoreFactory,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    keep_history: bool,
) -> None:
    """Rows revived between two batches are live again, and no later batch deletes (or
    archives) them."""
    monkeypatch.setattr(cleanup, "MIN_BATCH_ROWS", 4)
    monkeypatch.setattr(cleanup, "MAX_BATCH_ROWS", 4)
    store = make_store(session_max_age=60, keep_history=keep_history)
    ids = []
    for _ in range(20):
        ids.append(store.new_session().session_id)
        clock.advance(1)  # distinct expiries: batches take the oldest first
    clock.advance(120)
    doomed, revived = ids[:12], ids[12:]
    first_batch, go_on = threading.Event(), threading.Event()
    executor = store._executor
    assert executor is not None
    real_write = executor.write
    # SQLite's archiving batches are transactions (PostgreSQL's single statements).
    real_transaction = getattr(executor, "transaction", None)

    def pause() -> None:
        if not first_batch.is_set():
            first_batch.set()
            assert go_on.wait(WAIT)

    def write(statement: Prepared, values: Any) -> Result:
        result = real_write(statement, values)
        pause()
        return result

    def transaction(body: Any) -> Any:
        assert real_transaction is not None
        result = real_transaction(body)
        pause()
        return result

    monkeypatch.setattr(executor, "write", write)
    if real_transaction is not None:
        monkeypatch.setattr(executor, "transaction", transaction)
    deleted: list[int] = []
    cleaner = threading.Thread(target=lambda: deleted.append(store.cleanup()))
    cleaner.start()
    assert first_batch.wait(WAIT)
    monkeypatch.setattr(executor, "write", real_write)
    if real_transaction is not None:
        monkeypatch.setattr(executor, "transaction", real_transaction)
    for sid in revived:
        store.revive_session(ReviveSession(sid))
    go_on.set()
    cleaner.join(WAIT)
    assert deleted == [len(doomed)]
    assert not any(store.session_exists(sid) for sid in doomed)
    assert all(store.session_exists(sid) for sid in revived)


class _FakeExecutor:
    """Deletes from a pretend table at a fixed cost per row, on a fake clock."""

    class dialect:  # noqa: N801 - stands in for a Dialect
        name = "postgresql"

    def __init__(self, rows: int, seconds_per_row: float, clock: list[float]) -> None:
        self.rows, self.cost, self.clock = rows, seconds_per_row, clock
        self.batches: list[int] = []

    def write(self, statement: Any, values: dict[str, Any]) -> Result:
        batch = values["batch"]
        self.batches.append(batch)
        count = min(batch, self.rows)
        self.rows -= count
        self.clock[0] += count * self.cost
        return [], count

    def read(self, statement: Any, values: dict[str, Any]) -> Result:
        """Whether any row is left: the look a short batch takes before ending."""
        return ([("left",)] if self.rows else []), 0

    def checkpoint_soon(self) -> None:
        """Nothing to fold in: there is no log."""


@pytest.mark.parametrize("seconds_per_row", [1e-7, 2e-6, 1e-4])
def test_batch_size_follows_the_time_budget(
    monkeypatch: pytest.MonkeyPatch, seconds_per_row: float
) -> None:
    """Batches start at the start size, at most double, stay in bounds, settle on the budget."""
    now = [0.0]
    monkeypatch.setattr("sauce_sql.cleanup.time.perf_counter", lambda: now[0])
    executor = _FakeExecutor(500_000, seconds_per_row, now)
    statements = SimpleNamespace(delete_expired_batch=None, expired_bound=None)
    operation = cleanup.delete_expired(statements, None, dialect_name="postgresql")  # type: ignore[arg-type]
    deleted = ops.run(executor, operation)  # type: ignore[arg-type]
    assert deleted == 500_000
    sizes = executor.batches
    assert sizes[0] == cleanup.START_BATCH_ROWS
    assert all(cleanup.MIN_BATCH_ROWS <= s <= cleanup.MAX_BATCH_ROWS for s in sizes)
    assert all(b <= 2 * a for a, b in itertools.pairwise(sizes))
    budget = backend_for("postgresql").batch_seconds
    settled = max(
        cleanup.MIN_BATCH_ROWS, min(cleanup.MAX_BATCH_ROWS, int(budget / seconds_per_row))
    )
    assert abs(sizes[-2] - settled) <= 1


@pytest.fixture
def pg_backend(tmp_path: Path) -> Iterator[Backend]:
    """A table of its own on the PostgreSQL server."""
    yield from make_backend("postgresql", tmp_path)


@pytest.mark.postgresql
def test_a_batch_cut_short_by_revivals_does_not_end_the_cleanup(
    pg_backend: Backend, clock: FakeClock
) -> None:
    """PostgreSQL: revivals committed while a batch waits for their rows make that
    batch delete fewer rows than it asked for; the cleanup still goes on to the end."""
    import psycopg  # only the PostgreSQL tests need the driver

    backend = pg_backend
    store = Store(PG_URL, table_name=backend.table_name, clock=clock, clean_interval=None)
    store.start()
    try:
        revived = [store.new_session().session_id for _ in range(10)]
        clock.advance(1)  # the oldest rows, so the first batch picks them
        doomed = [store.new_session().session_id for _ in range(2 * cleanup.START_BATCH_ROWS)]
        clock.advance(store.get_state().session_max_age + 10)
        deleted: list[int] = []
        with psycopg.connect(libpq_dsn(PG_URL)) as reviver:
            reviver.execute(
                f"UPDATE {backend.table_name} SET expires_at = expires_at + interval '1 day'"
                " WHERE session_id = ANY(%s)",
                (revived,),
            )  # not committed yet: the cleanup's first batch waits for these rows
            cleaner = threading.Thread(target=lambda: deleted.append(store.cleanup()))
            cleaner.start()
            with admin(PG_URL) as watcher:
                wait_for(
                    lambda: watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND (query LIKE 'DELETE%%' OR query LIKE 'WITH moved%%')"
                    ).fetchone()[0],
                    WAIT,
                    "the cleanup waiting for the revived rows",
                )
            reviver.commit()
        cleaner.join(WAIT)
        assert deleted == [len(doomed)]
        assert store.cleanup() == 0
        assert all(store.session_exists(sid) for sid in revived)
    finally:
        store.close()


def test_a_cleanup_that_cannot_delete_gives_up_until_next_time(
    make_store: StoreFactory, clock: FakeClock, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows a trigger refuses to delete do not make cleanup loop for ever: it deletes
    the others, returns, and leaves those for later."""
    monkeypatch.setattr(cleanup, "MIN_BATCH_ROWS", 5)
    monkeypatch.setattr(cleanup, "START_BATCH_ROWS", 5)
    store = make_store(session_max_age=60)
    table = backend.table_name
    with store.engine.begin() as connection:
        if backend.dialect == "postgresql":
            connection.exec_driver_sql(
                f"CREATE FUNCTION keep_{table}() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF OLD.session_id LIKE 'keep%%' THEN RETURN NULL; END IF;"
                " RETURN OLD; END $$"
            )
            connection.exec_driver_sql(
                f"CREATE TRIGGER keep BEFORE DELETE ON {table}"
                f" FOR EACH ROW EXECUTE FUNCTION keep_{table}()"
            )
        else:
            connection.exec_driver_sql(
                f"CREATE TRIGGER keep BEFORE DELETE ON {table}"
                " WHEN OLD.session_id LIKE 'keep%' BEGIN SELECT RAISE(IGNORE); END"
            )
    # The deletable rows expire first: batches take rows in expiry order, and rows of
    # one expiry time come in no set order on PostgreSQL.
    gone = [store.new_session(f"gone-{n}").session_id for n in range(9)]
    clock.advance(1)
    kept = [store.new_session(f"keep-{n}").session_id for n in range(12)]
    clock.advance(120)
    try:
        deleted: list[int] = []
        cleaner = threading.Thread(target=lambda: deleted.append(store.cleanup()))
        cleaner.start()
        cleaner.join(WAIT)
        assert not cleaner.is_alive(), "cleanup kept trying rows it cannot delete"
        assert deleted == [len(gone)]
        with store.engine.connect() as connection:
            left = connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()
            archived = connection.exec_driver_sql(
                f"SELECT session_id FROM {table}_history ORDER BY session_id"
            ).all()
        assert left == len(kept)
        # What the trigger kept is not archived too: every session is in one place.
        assert [sid for (sid,) in archived] == sorted(gone)
    finally:
        if backend.dialect == "postgresql":
            with store.engine.begin() as connection:
                connection.exec_driver_sql(f"DROP TABLE {table}")
                connection.exec_driver_sql(f"DROP FUNCTION keep_{table}()")
