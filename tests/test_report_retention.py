"""History retention never changes the report: every figure of every past day is the
same before the rows go, while some are gone, and after all are gone, in UTC and in a
zone whose days change length (America/New_York's DST start, 2026-03-08)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import BACKENDS, Backend, FakeClock, StoreFactory, make_backend

from sauce_sql import Store
from sauce_sql.browsers import browser_family
from sauce_sql.history_sql import family_of
from sauce_sql.report import build_report


@pytest.fixture(params=[p for p in BACKENDS if p.values != ("pgbouncer_statement",)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend but statement pooling, which refuses the report's snapshot (a
    transaction)."""
    yield from make_backend(request.param, tmp_path)


DAY = 24 * 3600
FIRST = datetime(2026, 3, 4, 1, 7, tzinfo=timezone.utc)
SESSIONS = 90
#: Every 1 h 37 min: sessions land in every quarter hour, on both sides of midnights.
STEP = 97 * 60
AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko)"
    " SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
    "curl/8.5.0",
    "",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "SomethingElse/1.0",
    "Mozilla/5.0 OPR/114.0.0.0",
)
#: The zones and periods the report is read in: whole and partial periods, each
#: ending on a different day, so medians are taken over many different sets of days.
VIEWS = [("UTC", 30), ("America/New_York", 30), ("UTC", 3), ("America/New_York", 2)]


def fill(store: Store, clock: FakeClock) -> None:
    """Sessions with varied browsers, views, events and users, a week of them."""
    for n in range(SESSIONS):
        sid = f"r{n:03d}"
        store.new_session(
            sid, user_agent=AGENTS[n % len(AGENTS)], user_id=f"u{n}" if n % 4 == 0 else None
        )
        for _ in range((n * 7) % 11 + (9 if n % 13 == 0 else 0)):
            store.inc_sequence(sid, "view")
        for _ in range(n % 3):
            store.inc_sequence(sid, "event")
        clock.advance(STEP)


def reports(store: Store, at: list[datetime]) -> list[dict[str, Any]]:
    """The reports (as JSON) read at each moment of ``at`` in each of VIEWS, without the
    user agents, which the aggregates do not keep."""
    table = store.get_state().table_name
    found = []
    for moment in at:
        for tz, days in VIEWS:
            report = build_report(store.engine, table, moment, days=days, tz=tz).to_dict()
            del report["top_user_agents"]
            found.append(json.loads(json.dumps(report)))
    return found


def history_rows(store: Store) -> int:
    """How many rows history holds."""
    table = store.get_state().table_name
    with store.engine.connect() as connection:
        return int(
            connection.exec_driver_sql(f'SELECT count(*) FROM "{table}_history"').scalar() or 0
        )


def test_retention_keeps_every_figure_of_the_report(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Counts, shares, means, medians, maxima and browser families of every period are
    identical before retention, with part of history retired, and with all of it."""
    clock.now = FIRST
    store = make_store(session_max_age=60, history_max_age=20 * DAY)
    fill(store, clock)
    last = clock.now
    # Periods that end on each day of the sessions and after them.
    at = [FIRST + timedelta(days=d, hours=5) for d in range(0, 8)] + [last + timedelta(days=9)]
    clock.advance(120)
    store.cleanup()  # every session archived, none retired
    assert history_rows(store) == SESSIONS
    before = reports(store, at)
    whole = before[len(VIEWS) * (len(at) - 1)]
    assert whole["total_sessions"] == SESSIONS
    assert len(whole["browsers"]) == 9  # every family, "Other" and "(none)" included
    assert whole["views_per_session"]["max"] == 18
    assert sum(day["sessions"] for day in whole["days"]) == SESSIONS
    # New York's spring-forward day is 23 hours long, and holds sessions.
    assert any(
        day["day"] == "2026-03-08" and day["sessions"]
        for day in before[len(VIEWS) * (len(at) - 1) + 1]["days"]
    )

    clock.now = FIRST + timedelta(days=3, seconds=120) + timedelta(days=20)
    store.cleanup()  # the first three days retired, the rest still in history
    assert 0 < history_rows(store) < SESSIONS
    assert reports(store, at) == before

    clock.advance(30 * DAY)
    store.cleanup()  # all of history retired
    assert history_rows(store) == 0
    assert reports(store, at) == before


def test_retired_sessions_are_counted_once_in_each_aggregate(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """The browser and value aggregates hold each retired session once: per bucket,
    the families and each counter's values add up to the sessions counted."""
    clock.now = FIRST
    store = make_store(session_max_age=60, history_max_age=DAY)
    fill(store, clock)
    clock.advance(10 * DAY)
    store.cleanup()
    store.cleanup(clock.now + timedelta(days=2))
    assert history_rows(store) == 0
    table = store.get_state().table_name
    with store.engine.connect() as connection:

        def per_bucket(sql: str) -> dict[Any, int]:
            return {str(b): int(n) for b, n in connection.execute(sa.text(sql))}

        sessions = per_bucket(f'SELECT bucket_start, sessions FROM "{table}_aggregates"')
        families = per_bucket(
            f'SELECT bucket_start, sum(sessions) FROM "{table}_agg_browsers" GROUP BY 1'
        )
        for counter in ("views", "events"):
            values = per_bucket(
                f'SELECT bucket_start, sum(sessions) FROM "{table}_agg_values"'
                f" WHERE counter = '{counter}' GROUP BY 1"
            )
            assert values == sessions
    assert families == sessions
    assert sum(sessions.values()) == SESSIONS


MORE_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) CriOS/120.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/120.0 Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14) Chrome/120 Mobile Safari/537.36 EdgA/120.0",
    "Mozilla/5.0 (iPhone) Version/17.0 EdgiOS/120.0 Mobile/15E148 Safari/604.1",
    "Opera/9.80 (Windows NT 6.1) Presto/2.12",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "okhttp/4.12.0",
    "Mozilla/5.0 HeadlessChrome/120.0.0.0",
    "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) Mobile/15E148 Safari",
    "robot",
    "botany/1.0",
    "XBOT",
    "Chromium/120 Linux",
    "Version/1.2 (Macintosh) Safari",
    "spider-man/3",
    "Wget/1.21",
    "HTTPX/0.27",
    "Yahoo! Slurp",
    "Mozilla/5.0 (Windows NT 10.0) Gecko/20100101",
    "chrome/1",
    "Ünïcode Firefox/1",
    "firefox_/1",
)


def test_postgresql_names_browser_families_as_python_does(
    make_store: StoreFactory, store_kind: str
) -> None:
    """Retention names families in SQL; on PostgreSQL with regular expressions
    translated from the Python rules, which must agree with them."""
    store = make_store()
    if store.engine.dialect.name != "postgresql" or store_kind != "sync":
        pytest.skip("PostgreSQL's translation of the rules, checked once")
    agents = AGENTS + MORE_AGENTS
    with store.engine.connect() as connection:
        named = [
            connection.scalar(sa.select(family_of(sa.literal(agent, sa.String()), "postgresql")))
            for agent in agents
        ]
    assert named == [browser_family(agent) for agent in agents]
