"""What the sessions say: the figures behind ``sauce-sql report``.

The report counts over everything ever recorded: the live table, its history, and the
aggregates history retention left of the rows it removed. Sessions are counted in
15-minute UTC buckets of their ``created_at`` (in SQL), and the buckets are added up
into the calendar days of the zone asked for (here): every IANA zone's offset is a
whole number of quarter hours, so each bucket falls within one local day, and days of
23 or 25 hours come out right.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine, Table, case, func, inspect, literal_column, select
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql import validation
from sauce_sql.browsers import browser_family
from sauce_sql.engine import snapshot
from sauce_sql.errors import InvalidInput, StoreUnavailable, unavailable
from sauce_sql.history_sql import bucket_of
from sauce_sql.redact import shown
from sauce_sql.schema import (
    aggregates_table,
    history_table,
    sessions_table,
)

__all__ = [
    "DEFAULT_DAYS",
    "DayFigures",
    "Distribution",
    "Report",
    "build_report",
    "format_report",
    "previous_shift",
    "zone",
]

DEFAULT_DAYS = 30
MAX_DAYS = 3660
TOP_USER_AGENTS = 5
_FIGURES = ("sessions", "views", "events", "bounces", "identified", "revived")


@dataclass(frozen=True, slots=True)
class Distribution:
    """Mean, median and maximum of a per-session counter."""

    mean: float
    median: float
    max: int


@dataclass(slots=True)
class DayFigures:
    """One calendar day: sessions started that day and what they did, revivals that day,
    and the sessions of the weekday-aligned day of the previous period."""

    day: str
    sessions: int = 0
    views: int = 0
    events: int = 0
    bounces: int = 0
    identified: int = 0
    revived: int = 0
    previous_day: str = ""
    previous_sessions: int = 0


@dataclass(frozen=True, slots=True)
class Report:
    """Figures over every session one table ever recorded."""

    table_name: str
    generated_at: str
    timezone: str
    live_sessions: int
    #: Live, archived and aggregated sessions: everything ever recorded.
    total_sessions: int
    #: The days asked for, oldest first.
    days: list[DayFigures]
    sessions_per_day: dict[str, int]
    #: Sessions started before the first of those days: with the days, every session.
    sessions_before_those_days: int
    views_per_session: Distribution
    events_per_session: Distribution
    identified_share: float
    bounce_share: float
    revived_sessions: int
    browsers: list[dict[str, Any]]
    top_user_agents: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


def zone(name: object) -> ZoneInfo:
    """The IANA zone called ``name``; InvalidInput if there is none."""
    if not isinstance(name, str):
        raise TypeError(f"tz must be a str, not {type(name).__name__}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            f"unknown time zone {shown(name)}: give an IANA zone such as 'UTC' or 'Europe/Berlin'"
        ) from None


def previous_shift(days: int) -> int:
    """How many days back the previous period starts: whole weeks, so that each day is
    compared with the same weekday."""
    return 7 * math.ceil(days / 7)


def _local_day(moment: Any, tz: ZoneInfo) -> date:
    if isinstance(moment, str):  # SQLite's UTC text
        moment = datetime.fromisoformat(moment + "+00:00")
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(tz).date()  # type: ignore[no-any-return]


def _buckets(connection: Connection, table: Table, dialect: str, since: datetime) -> Any:
    bucket = bucket_of(table.c.created_at, dialect)
    return connection.execute(
        select(
            bucket,
            func.count(),
            func.sum(table.c.view_sequence),
            func.sum(table.c.event_sequence),
            func.count(case((table.c.view_sequence <= 1, 1))),
            func.count(table.c.user_id),
        )
        .where(table.c.created_at >= since)
        .group_by(literal_column("1"))
    )


def _totals(connection: Connection, table: Table) -> tuple[int, int, int, int, int]:
    """Sessions, views, events, bounces and identified over a whole table."""
    row = connection.execute(
        select(
            func.count(),
            func.coalesce(func.sum(table.c.view_sequence), 0),
            func.coalesce(func.sum(table.c.event_sequence), 0),
            func.count(case((table.c.view_sequence <= 1, 1))),
            func.count(table.c.user_id),
        )
    ).one()
    return tuple(int(value) for value in row)  # type: ignore[return-value]


def _histogram(connection: Connection, tables: list[Table], column: str) -> Counter[int]:
    counts: Counter[int] = Counter()
    for table in tables:
        counter = table.c[column]
        for value, n in connection.execute(select(counter, func.count()).group_by(counter)):
            counts[int(value)] += int(n)
    return counts


def _distribution(counts: Counter[int], total: int, summed: int) -> Distribution:
    """The mean over every session (``summed / total``), and the median and maximum
    over the sessions still held row by row (``counts``)."""
    held = sum(counts.values())
    if not total:
        return Distribution(0.0, 0.0, 0)
    middle = [(held - 1) // 2, held // 2]
    values: list[int] = []
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        while middle and middle[0] < seen:
            values.append(value)
            middle.pop(0)
    median = sum(values) / len(values) if values else 0.0
    return Distribution(round(summed / total, 2), median, max(counts, default=0))


def build_report(
    engine: Engine,
    table_name: str,
    now: datetime,
    *,
    days: int = DEFAULT_DAYS,
    tz: str = "UTC",
) -> Report:
    """Read the figures of ``table_name`` as of ``now`` (an aware datetime), for the
    ``days`` calendar days of zone ``tz`` that end with today's."""
    now = validation.aware_utc(now, "now")
    table_name = validation.table_name(table_name)
    if isinstance(days, bool) or not isinstance(days, int):
        raise TypeError(f"days must be an int, not {type(days).__name__}")
    if not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"days must be from 1 to {MAX_DAYS}, got {days}")
    local = zone(tz)
    live, history, aggregates = (
        sessions_table(table_name),
        history_table(table_name),
        aggregates_table(table_name),
    )
    dialect = engine.dialect.name
    today = now.astimezone(local).date()
    first = today - timedelta(days=days - 1)
    shift = previous_shift(days)
    earliest = first - timedelta(days=shift)
    # A day early in UTC: whatever the zone, no bucket of the earliest day is before it.
    since = datetime.combine(earliest - timedelta(days=1), time(), timezone.utc)
    by_day: dict[date, list[int]] = {}
    try:
        with snapshot(engine) as connection:
            present = set(inspect(connection).get_table_names())
            if table_name not in present:
                raise StoreUnavailable(
                    f"table {table_name!r} does not exist: run `sauce-sql migrate` first"
                )
            tables = [live] + ([history] if history.name in present else [])
            for table in tables:
                for bucket, *figures in _buckets(connection, table, dialect, since):
                    sums = by_day.setdefault(_local_day(bucket, local), [0] * 6)
                    for i, value in enumerate(figures):
                        sums[i] += int(value or 0)
            totals = [0] * 6
            for table in tables:
                for i, value in enumerate(_totals(connection, table)):
                    totals[i] += value
            if aggregates.name in present:
                counters = [aggregates.c[name] for name in _FIGURES]
                for bucket, *figures in connection.execute(
                    select(aggregates.c.bucket_start, *counters).where(
                        aggregates.c.bucket_start >= since
                    )
                ):
                    sums = by_day.setdefault(_local_day(bucket, local), [0] * 6)
                    for i, value in enumerate(figures):
                        sums[i] += int(value)
                summed = connection.execute(
                    select(*(func.coalesce(func.sum(c), 0) for c in counters))
                ).one()
                for i, value in enumerate(summed):
                    totals[i] += int(value)
            live_count = connection.scalar(
                select(func.count()).select_from(live).where(live.c.expires_at > now)
            )
            views = _histogram(connection, tables, "view_sequence")
            events = _histogram(connection, tables, "event_sequence")
            agents: Counter[str] = Counter()
            for table in tables:
                for agent, n in connection.execute(
                    select(table.c.user_agent, func.count()).group_by(table.c.user_agent)
                ):
                    agents[agent] += int(n)
    except SQLAlchemyError as exc:
        raise unavailable("cannot read the report", exc) from exc

    shown_days = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        before = day - timedelta(days=shift)
        sums = by_day.get(day, [0] * 6)
        shown_days.append(
            DayFigures(
                str(day),
                **dict(zip(_FIGURES, sums, strict=True)),
                previous_day=str(before),
                previous_sessions=by_day.get(before, [0] * 6)[0],
            )
        )
    total, views_sum, events_sum, bounces, identified, revived = totals
    families: Counter[str] = Counter()
    for agent, n in agents.items():
        families[browser_family(agent)] += n
    in_days = sum(d.sessions for d in shown_days)
    later = sum(sums[0] for day, sums in by_day.items() if day > today)
    return Report(
        table_name=table_name,
        generated_at=now.isoformat(),
        timezone=local.key,
        live_sessions=int(live_count or 0),
        total_sessions=total,
        days=shown_days,
        sessions_per_day={d.day: d.sessions for d in shown_days},
        sessions_before_those_days=max(total - in_days - later, 0),
        views_per_session=_distribution(views, total, views_sum),
        events_per_session=_distribution(events, total, events_sum),
        identified_share=round(identified / total, 4) if total else 0.0,
        bounce_share=round(bounces / total, 4) if total else 0.0,
        revived_sessions=revived,
        browsers=[
            {"family": family, "sessions": n}
            for family, n in sorted(families.items(), key=lambda item: (-item[1], item[0]))
        ],
        top_user_agents=[
            {"user_agent": agent, "sessions": n}
            for agent, n in sorted(agents.items(), key=lambda item: (-item[1], item[0]))[
                :TOP_USER_AGENTS
            ]
        ],
    )


def format_report(report: Report, width: int = 80) -> str:
    """The report as aligned text for people, with sparklines ``width`` columns wide."""
    from sauce_sql.report_text import format_text

    return format_text(report, width)
