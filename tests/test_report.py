"""The report's figures, read straight from a store's table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BACKENDS, Backend, FakeClock, StoreFactory, make_backend

from sauce_sql.report import build_report


@pytest.fixture(params=[p for p in BACKENDS if p.values != ("pgbouncer_statement",)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend but statement pooling: the report reads one snapshot, which is a
    transaction, and a pooler in statement mode refuses transactions."""
    yield from make_backend(request.param, tmp_path)


def test_every_row_is_counted_by_day(make_store: StoreFactory, clock: FakeClock) -> None:
    """Rows older than the seven days shown are counted as earlier, so the per-day
    counts and that count add up to every row the table holds."""
    store = make_store(session_max_age=90 * 24 * 3600)
    for _ in range(5):
        store.new_session()
    clock.advance(30 * 24 * 3600)
    store.new_session()
    report = build_report(store.engine, store.get_state().table_name, clock.now)
    assert report.total_sessions == 6
    assert report.live_sessions == 6
    assert report.sessions_before_those_days == 5
    assert sum(report.sessions_per_day.values()) == 1
    assert report.sessions_per_day[str(clock.now.date())] == 1


def test_empty_table_reports_zeros(make_store: StoreFactory, clock: FakeClock) -> None:
    """An empty table gives zero counts and zero distributions, not an error."""
    store = make_store()
    report = build_report(store.engine, store.get_state().table_name, clock.now)
    assert (report.total_sessions, report.live_sessions) == (0, 0)
    assert report.views_per_session.max == 0
    assert report.bounce_share == 0.0
