"""``sauce-sql demo``: the main job end to end, on the embedded SQLite default.

Simulated visitors browse over a simulated week (a clock the demo advances, so it runs
in seconds), the store is closed and reopened as at a restart, returning visitors
revive their sessions from the dicts their cookies kept, expired sessions are archived
by the cleanup, and the report says what happened over the simulated week.

Without a URL the demo runs on a SQLite file in a temporary folder that it removes at
the end; it writes into a database of yours only when given one.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sauce_sql.errors import InvalidInput
from sauce_sql.models import AnalyticsSession, ReviveSession
from sauce_sql.report import build_report, format_report
from sauce_sql.store import Store

__all__ = ["SimulatedClock", "run_demo"]

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 Version/18.1 Safari",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "curl/8.5.0",
]
SESSION_MAX_AGE = 30 * 60


class SimulatedClock:
    """An aware UTC clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += timedelta(seconds=seconds)


def _new_visitor(store: Store, rng: random.Random) -> AnalyticsSession:
    """One visitor: a session, maybe a login, a few page views with events."""
    if rng.random() < 0.7:
        client_ip = f"203.0.113.{rng.randrange(1, 255)}"
    else:
        client_ip = f"2001:db8::{rng.randrange(1, 0xFFFF):x}"
    session = store.new_session(user_agent=rng.choice(USER_AGENTS), client_ip=client_ip)
    if rng.random() < 0.3:
        store.assign_user(session.session_id, f"user-{rng.randrange(1000)}")
    for _ in range(rng.choice([1, 1, 2, 3, 4, 6, 9])):
        store.inc_sequence(session.session_id, "view")
        for _ in range(rng.randrange(3)):
            store.inc_sequence(session.session_id, "event")
    return session


def run_demo(
    url: str | None = None,
    *,
    table_name: str = "sessions",
    visitors: int = 200,
    seed: int = 7,
    echo: Callable[[str], None] = print,
    now: datetime | None = None,
) -> None:
    """Run the demo on ``url``, by default a SQLite file in a temporary folder that is
    removed at the end. The simulated week ends on the UTC day of ``now`` (an aware
    datetime; by default the current time)."""
    if isinstance(visitors, bool) or not isinstance(visitors, int):
        raise TypeError(f"visitors must be an int, not {type(visitors).__name__}")
    if visitors < 1:
        raise InvalidInput(f"the demo needs at least 1 visitor, got {visitors}")
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.utcoffset() is None:
        raise InvalidInput("the demo's now must be an aware datetime")
    if url is not None:
        _run(url, table_name, visitors, seed, echo, now)
        return
    with tempfile.TemporaryDirectory(prefix="sauce-sql-demo-") as folder:
        path = Path(folder) / "sauce_sql.db"
        echo(f"demo database: {path} (a temporary file, removed at the end)")
        _run(f"sqlite:///{path}", table_name, visitors, seed, echo, now)


def _run(
    url: str,
    table_name: str,
    visitors: int,
    seed: int,
    echo: Callable[[str], None],
    now: datetime,
) -> None:
    rng = random.Random(seed)
    # The first visitor at 01:00 UTC six days before the week's last day: the visitors'
    # six days (give or take hours) and the restart then end a few hours into that day
    # (or late the day before), and every session falls within the report's last seven
    # UTC days, at whatever time of day the demo runs. Started a fixed time before now
    # instead, the first visitors fell on an eighth day before about 12:00 UTC. Before
    # 06:00 UTC the week ends yesterday, so that its clock stays behind the real one.
    last_day = (now.astimezone(timezone.utc) - timedelta(hours=6)).replace(
        hour=1, minute=0, second=0, microsecond=0
    )
    clock = SimulatedClock(last_day - timedelta(days=6))

    def open_store() -> Store:
        return Store(
            url,
            table_name=table_name,
            session_max_age=SESSION_MAX_AGE,
            clean_interval=None,
            clock=clock,
        )

    cookies: list[dict[str, str | None]] = []
    with open_store() as store:
        for _ in range(visitors):
            clock.advance(6 * 24 * 3600 / visitors * rng.uniform(0.5, 1.5))
            last = _new_visitor(store, rng)
            if rng.random() < 0.25:
                cookies.append(ReviveSession(last.session_id, last.user_agent).to_dict())
        before = store.lookup_session(last.session_id)
        echo(f"{visitors} visitors browsed over six days; {len(cookies)} kept a revive cookie")
        echo("closing the store (a restart) ...")

    with open_store() as store:
        after = store.lookup_session(last.session_id)
        survived = before is not None and after == before
        echo(f"reopened: the last visitor's session survived the restart intact: {survived}")
        clock.advance(2 * 3600)  # two hours later every earlier session has expired
        continuing = 0
        for cookie in cookies:
            revived = store.maybe_revive_session(ReviveSession.from_dict(cookie))
            continuing += revived.view_sequence > 0
            store.inc_sequence(revived.session_id, "view")
        echo(
            f"revived {len(cookies)} expired sessions from their cookies; {continuing} "
            "continued their view sequence instead of starting again at 0"
        )
        for _ in range(visitors // 10):
            _new_visitor(store, rng)
        echo(f"{visitors // 10} new visitors arrived")
        moved = store.cleanup()
        echo(f"cleanup archived {moved} expired sessions into {table_name}_history")
        echo("")
        report: Any = build_report(store.engine, table_name, clock.now, days=7)
        echo(format_report(report))
