"""The report's figures, read straight from a store's table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import BACKENDS, Backend, FakeClock, StoreFactory, make_backend

from sauce_sql import InvalidInput, ReviveSession, Store
from sauce_sql.report import build_report


@pytest.fixture(params=[p for p in BACKENDS if p.values != ("pgbouncer_statement",)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend but statement pooling: the report reads one snapshot, which is a
    transaction, and a pooler in statement mode refuses transactions."""
    yield from make_backend(request.param, tmp_path)


def test_every_row_is_counted_by_day(make_store: StoreFactory, clock: FakeClock) -> None:
    """Sessions older than the days shown are counted as earlier, so the per-day
    counts and that count add up to every session recorded."""
    store = make_store(session_max_age=90 * 24 * 3600)
    for _ in range(5):
        store.new_session()
    clock.advance(30 * 24 * 3600)
    store.new_session()
    report = build_report(store.engine, store.get_state().table_name, clock.now, days=7)
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


DAY = 24 * 3600.0


def at(clock: FakeClock, moment: datetime) -> None:
    """Set the fake clock to ``moment``."""
    clock.now = moment


def test_days_are_the_zones_calendar_days_across_dst(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """--tz counts each session on its local calendar day, on the 23-hour day of a DST
    change and in a zone 5:45 from UTC alike."""
    store = make_store(session_max_age=DAY * 90)
    moments = {
        # Berlin springs forward on 2026-03-29: that day has 23 hours.
        "b-first": datetime(2026, 3, 28, 23, 30, tzinfo=timezone.utc),  # 00:30 CET, 29th
        "b-last": datetime(2026, 3, 29, 21, 59, tzinfo=timezone.utc),  # 23:59 CEST, 29th
        "b-next": datetime(2026, 3, 29, 22, 1, tzinfo=timezone.utc),  # 00:01 CEST, 30th
    }
    for sid, moment in moments.items():
        at(clock, moment)
        store.new_session(sid)
    table = store.get_state().table_name
    now = datetime(2026, 3, 30, 12, tzinfo=timezone.utc)
    berlin = build_report(store.engine, table, now, days=3, tz="Europe/Berlin")
    assert berlin.sessions_per_day == {"2026-03-28": 0, "2026-03-29": 2, "2026-03-30": 1}
    utc = build_report(store.engine, table, now, days=3)
    assert utc.sessions_per_day == {"2026-03-28": 1, "2026-03-29": 2, "2026-03-30": 0}
    at(clock, datetime(2026, 3, 30, 18, 14, tzinfo=timezone.utc))  # 23:59 in Kathmandu
    store.new_session("k-late")
    at(clock, datetime(2026, 3, 30, 18, 16, tzinfo=timezone.utc))  # 00:01 the next day
    store.new_session("k-early")
    later = datetime(2026, 3, 31, 6, tzinfo=timezone.utc)
    kathmandu = build_report(store.engine, table, later, days=2, tz="Asia/Kathmandu")
    # b-last, b-next (03:44 and 03:46 there) and k-late.
    assert kathmandu.sessions_per_day["2026-03-30"] == 3
    assert kathmandu.sessions_per_day["2026-03-31"] == 1
    assert kathmandu.timezone == "Asia/Kathmandu"


def test_history_retention_never_changes_past_figures(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Sessions archived and then removed by history retention still count, on the same
    days and with the same views, events, bounces and identified shares."""
    store = make_store(session_max_age=60, history_max_age=20 * DAY)
    for n in range(12):
        store.new_session(f"s{n}", user_id="u" if n % 3 == 0 else None)
        for _ in range(n % 4):
            store.inc_sequence(f"s{n}", "view")
        store.inc_sequence(f"s{n}", "event")
        clock.advance(DAY / 3)  # four days of sessions
    table = store.get_state().table_name
    report_at = clock.now + timedelta(days=40)

    def figures() -> list[tuple[int, ...]]:
        report = build_report(store.engine, table, report_at, days=45)
        return [(d.sessions, d.views, d.events, d.bounces, d.identified) for d in report.days]

    before = figures()
    assert sum(day[0] for day in before) == 12
    clock.advance(120)
    store.cleanup()  # archived
    assert figures() == before
    clock.advance(30 * DAY)
    store.cleanup()  # removed from history, folded into the aggregates
    with store.engine.connect() as connection:
        left = connection.exec_driver_sql(f'SELECT count(*) FROM "{table}_history"').scalar()
    assert left == 0
    assert figures() == before
    report = build_report(store.engine, table, report_at, days=45)
    assert report.total_sessions == 12
    assert report.identified_share == round(4 / 12, 4)


def test_previous_period_is_weekday_aligned(make_store: StoreFactory, clock: FakeClock) -> None:
    """Each day is compared with the same weekday of the previous period, whole weeks back."""
    store = make_store(session_max_age=DAY * 90)
    store.new_session("then")
    clock.advance(14 * DAY)
    store.new_session("now")
    report = build_report(store.engine, store.get_state().table_name, clock.now, days=10)
    today = report.days[-1]
    assert today.sessions == 1
    assert today.previous_day == str((clock.now - timedelta(days=14)).date())
    assert today.previous_sessions == 1
    assert [d.day for d in report.days] == sorted(d.day for d in report.days)


def test_revivals_are_reported_on_their_day(make_store: StoreFactory, clock: FakeClock) -> None:
    """A revival of an archived session counts on the day it happened."""
    store = make_store(session_max_age=60)
    store.new_session("r")
    clock.advance(2 * DAY)
    store.cleanup()
    store.revive_session(ReviveSession("r"))
    report = build_report(store.engine, store.get_state().table_name, clock.now, days=3)
    assert [d.revived for d in report.days] == [0, 0, 1]
    assert report.revived_sessions == 1
    assert report.total_sessions == 1


def test_bad_report_arguments_are_refused(store: Store, clock: FakeClock) -> None:
    """An unknown zone or a day count out of range is InvalidInput."""
    table = store.get_state().table_name
    with pytest.raises(InvalidInput):
        build_report(store.engine, table, clock.now, tz="Nowhere/Else")
    with pytest.raises(InvalidInput):
        build_report(store.engine, table, clock.now, days=0)


def test_distributions_shares_and_browsers_are_the_periods(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Views per session, the shares and the browsers describe the sessions of the days
    asked for, whether live or archived; sessions of long before count only in the
    totals."""
    store = make_store(session_max_age=60)
    for n in range(3):
        store.new_session(f"old{n}", user_agent="curl/8.5.0", user_id="u")
        for _ in range(9):
            store.inc_sequence(f"old{n}", "view")
    clock.advance(60 * DAY)
    firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0"
    store.new_session("new0", user_agent=firefox)
    store.inc_sequence("new0", "view")
    store.new_session("new1", user_agent=firefox)
    for _ in range(3):
        store.inc_sequence("new1", "view")
    clock.advance(120)
    store.cleanup()  # every session archived
    report = build_report(store.engine, store.get_state().table_name, clock.now, days=7)
    assert report.total_sessions == 5
    assert report.sessions_before_those_days == 3
    assert report.browsers == [{"family": "Firefox", "sessions": 2}]
    assert report.views_per_session.mean == 2.0
    assert report.views_per_session.median == 2.0
    assert report.views_per_session.max == 3
    assert report.bounce_share == 0.5
    assert report.identified_share == 0.0
