"""PostgreSQL: history as monthly partitions, converted in place and used by the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Backend, FakeClock, make_backend

from sauce_sql import ReviveSession, Store, migrate
from sauce_sql.partitions import ensure_partitions, partition_history

pytestmark = pytest.mark.postgresql
DAY = 24 * 3600.0


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Backend]:
    """A table of its own on the PostgreSQL server."""
    yield from make_backend("postgresql", tmp_path)


def partitions(engine: sa.Engine, history: str) -> list[str]:
    """The names of the partitions of ``history``."""
    with engine.connect() as connection:
        return sorted(
            connection.exec_driver_sql(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                f" JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = '{history}'"
            ).scalars()
        )


def test_history_converts_to_monthly_partitions_and_keeps_working(
    pg: Backend, clock: FakeClock
) -> None:
    """A populated history becomes monthly partitions with every row kept; cleanup then
    archives into them, revival and forget find rows there, retention deletes from them,
    and alembic check finds no drift."""
    store = Store(
        pg.url,
        table_name=pg.table_name,
        clean_interval=None,
        clock=clock,
        session_max_age=60,
        history_max_age=60 * DAY,
    ).start()
    try:
        for n in range(5):
            store.new_session(f"old{n}", user_id="alice" if n == 0 else None)
            store.inc_sequence(f"old{n}", "view")
            clock.advance(10 * DAY)
            store.cleanup()
        history = f"{pg.table_name}_history"
        made = partition_history(store.engine, pg.table_name, now=clock.now)
        assert len(made) >= 5
        assert set(made) <= set(partitions(store.engine, history))
        assert f"{history}_default" in partitions(store.engine, history)
        assert ensure_partitions(store.engine, pg.table_name, now=clock.now)[-1] == made[-1]
        migrate.check(store.engine, pg.table_name)
        store.new_session("new")
        clock.advance(120)
        store.cleanup()
        with store.engine.connect() as connection:
            count = connection.exec_driver_sql(f'SELECT count(*) FROM "{history}"').scalar()
        assert count == 6
        assert store.revive_session(ReviveSession("old3")).view_sequence == 1
        assert store.forget_user("alice") == 1
        clock.advance(45 * DAY)
        # old1 and old2 expired more than 60 days ago; old3, revived, was archived again.
        store.cleanup()
        with store.engine.connect() as connection:
            left = sorted(
                connection.exec_driver_sql(f'SELECT session_id FROM "{history}"').scalars()
            )
        assert left == ["new", "old3", "old4"]
    finally:
        store.close()
