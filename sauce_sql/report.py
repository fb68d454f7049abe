"""What the sessions say: the figures behind ``sauce-sql report``.

The report counts over everything ever recorded: the live table, its history, and the
aggregates history retention left of the rows it removed. Sessions are counted in
15-minute UTC buckets of their ``created_at`` (in SQL), and the buckets are added up
into the calendar days of the zone asked for (here): every IANA zone's offset is a
whole number of quarter hours, so each bucket falls within one local day, and days of
23 or 25 hours come out right. Medians, maxima and browser families of a period add
the rows' histograms to the aggregates' (sessions per bucket and value, per bucket and
family) of the buckets within the period's local midnights: a session is in either,
never both, since retention folds and deletes it in one transaction.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    case,
    cast,
    func,
    inspect,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql import validation
from sauce_sql.browsers import cached_family
from sauce_sql.engine import snapshot
from sauce_sql.errors import InvalidInput, StoreUnavailable, unavailable
from sauce_sql.history_sql import bucket_of
from sauce_sql.redact import shown
from sauce_sql.schema import (
    BUCKET_SECONDS,
    aggregates_table,
    browser_aggregates_table,
    history_table,
    sessions_table,
    value_aggregates_table,
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
    #: The figures below are those of the sessions started in the days asked for (the
    #: period, as in most analytics tools), every such session counted whether its row
    #: is held or history retention folded it into the aggregates; only sessions
    #: retired before schema revision 0003 left no browser family or counter values,
    #: so medians, maxima and browsers leave those out. User agents (not kept in the
    #: aggregates) count the sessions still held row by row.
    views_per_session: Distribution
    events_per_session: Distribution
    identified_share: float
    bounce_share: float
    #: Revivals ever counted (not only in the period).
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


def _bucket_columns(table: Table, dialect: str) -> list[ColumnElement[Any]]:
    """What a 15-minute UTC bucket of ``created_at`` is grouped by: on SQLite the hour's
    text and the quarter (cheaper to group by than one formatted string); on PostgreSQL
    the bucket's start."""
    if dialect == "sqlite":
        minute = cast(func.substr(table.c.created_at, 15, 2), BigInteger())
        return [func.substr(table.c.created_at, 1, 13), minute // 15]
    return [bucket_of(table.c.created_at, dialect)]


def _bucket_moment(key: Sequence[Any]) -> Any:
    """The start of a bucket from the values :func:`_bucket_columns` grouped by."""
    if len(key) == 2:  # SQLite's hour text and quarter
        hour = datetime.fromisoformat(f"{key[0]}:00+00:00")
        return hour + timedelta(seconds=BUCKET_SECONDS * int(key[1]))
    return key[0]


def _since(table: Table, moment: datetime, archived: bool) -> ColumnElement[bool]:
    """Rows that started at or after ``moment``. A session expires after it starts, so
    for history the same bound on ``expires_at`` holds too, and makes the condition a
    range of history's key rather than a scan of every row ever archived. (Not for the
    live table: it is small, and its ``expires_at`` index would cost a lookup a row.)"""
    started = table.c.created_at >= moment
    return and_(table.c.expires_at >= moment, started) if archived else started


def _buckets(
    connection: Connection, table: Table, dialect: str, since: datetime, archived: bool
) -> Any:
    keys = _bucket_columns(table, dialect)
    figures = connection.execute(
        select(
            *keys,
            func.count(),
            func.sum(table.c.view_sequence),
            func.sum(table.c.event_sequence),
            func.count(case((table.c.view_sequence <= 1, 1))),
            func.count(table.c.user_id),
        )
        .where(_since(table, since, archived))
        .group_by(*keys)
    )
    for row in figures:
        yield _bucket_moment(row[: len(keys)]), row[len(keys) :]


def _period_rows(
    connection: Connection, table: Table, start: datetime, end: datetime, archived: bool
) -> tuple[Counter[int], Counter[int], Counter[str]]:
    """Views and events histograms and user-agent counts of the rows of ``table`` that
    started in [start, end)."""
    period = and_(_since(table, start, archived), table.c.created_at < end)
    views: Counter[int] = Counter()
    events: Counter[int] = Counter()
    agents: Counter[str] = Counter()
    counters = (table.c.view_sequence, table.c.event_sequence)
    for view, event, n in connection.execute(
        select(*counters, func.count()).where(period).group_by(*counters)
    ):
        views[int(view)] += int(n)
        events[int(event)] += int(n)
    agent = table.c.user_agent
    for value, n in connection.execute(select(agent, func.count()).where(period).group_by(agent)):
        agents[value] += int(n)
    return views, events, agents


def _period_aggregates(
    connection: Connection, table_name: str, present: set[str], start: datetime, end: datetime
) -> tuple[Counter[int], Counter[int], Counter[str]]:
    """Views and events histograms and browser-family counts that retention kept of
    the sessions started in [start, end) (local midnights, so bucket boundaries)."""
    views: Counter[int] = Counter()
    events: Counter[int] = Counter()
    families: Counter[str] = Counter()
    values = value_aggregates_table(table_name)
    if values.name in present:
        c = values.c
        for counter, value, n in connection.execute(
            select(c.counter, c.value, func.sum(c.sessions))
            .where(c.bucket_start >= start, c.bucket_start < end)
            .group_by(c.counter, c.value)
        ):
            (views if counter == "views" else events)[int(value)] += int(n)
    browsers = browser_aggregates_table(table_name)
    if browsers.name in present:
        c = browsers.c
        for family, n in connection.execute(
            select(c.family, func.sum(c.sessions))
            .where(c.bucket_start >= start, c.bucket_start < end)
            .group_by(c.family)
        ):
            families[family] += int(n)
    return views, events, families


def _distribution(counts: Counter[int], total: int, summed: int) -> Distribution:
    """The mean over every session (``summed / total``), and the median and maximum
    over the sessions whose values are known (``counts``: held row by row, or kept
    value by value in the aggregates)."""
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


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first moment of ``day`` in ``tz``, in UTC (where midnight falls in a DST gap,
    the moment of the change)."""
    return datetime.combine(day, time(), tz).astimezone(timezone.utc)


def build_report(
    engine: Engine,
    table_name: str,
    now: datetime,
    *,
    days: int = DEFAULT_DAYS,
    tz: str = "UTC",
) -> Report:
    """Read the figures of ``table_name`` as of ``now`` (an aware datetime), for the
    ``days`` calendar days of zone ``tz`` that end with today's.

    What it reads is bounded by those days and the previous period, not by all that
    was ever recorded: per-bucket figures of the rows that started since the previous
    period began, the aggregates of those buckets, and a count of every row.
    """
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
    start, end = _local_midnight(first, local), _local_midnight(today + timedelta(days=1), local)
    by_day: dict[date, list[int]] = {}
    views: Counter[int] = Counter()
    events: Counter[int] = Counter()
    agents: Counter[str] = Counter()
    families: Counter[str] = Counter()
    total = revived = 0
    try:
        with snapshot(engine) as connection:
            present = set(inspect(connection).get_table_names())
            if table_name not in present:
                raise StoreUnavailable(
                    f"table {table_name!r} does not exist: run `sauce-sql migrate` first"
                )
            tables = [(live, False)] + ([(history, True)] if history.name in present else [])
            for table, archived in tables:
                for bucket, figures in _buckets(connection, table, dialect, since, archived):
                    sums = by_day.setdefault(_local_day(bucket, local), [0] * 6)
                    for i, value in enumerate(figures):
                        sums[i] += int(value or 0)
                more = _period_rows(connection, table, start, end, archived)
                views, events, agents = views + more[0], events + more[1], agents + more[2]
                total += int(connection.scalar(select(func.count()).select_from(table)) or 0)
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
                    select(
                        func.coalesce(func.sum(aggregates.c.sessions), 0),
                        func.coalesce(func.sum(aggregates.c.revived), 0),
                    )
                ).one()
                total += int(summed[0])
                revived = int(summed[1])
            more = _period_aggregates(connection, table_name, present, start, end)
            views, events, families = views + more[0], events + more[1], more[2]
            live_count = connection.scalar(
                select(func.count()).select_from(live).where(live.c.expires_at > now)
            )
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
    in_days = sum(d.sessions for d in shown_days)
    period = [sum(getattr(d, name) for d in shown_days) for name in _FIGURES[1:5]]
    views_sum, events_sum, bounces, identified = period
    for agent, n in agents.items():
        families[cached_family(agent)] += n
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
        views_per_session=_distribution(views, in_days, views_sum),
        events_per_session=_distribution(events, in_days, events_sum),
        identified_share=round(identified / in_days, 4) if in_days else 0.0,
        bounce_share=round(bounces / in_days, 4) if in_days else 0.0,
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
