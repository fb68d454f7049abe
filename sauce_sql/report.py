"""What the sessions say: the figures behind ``sauce-sql report``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Table, case, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql import validation
from sauce_sql.engine import snapshot
from sauce_sql.errors import StoreUnavailable, unavailable
from sauce_sql.schema import sessions_table
from sauce_sql.statements import utc_day

__all__ = ["Distribution", "Report", "build_report", "format_report"]

DAYS = 7
TOP_USER_AGENTS = 5


@dataclass(frozen=True, slots=True)
class Distribution:
    """Mean, median and maximum of a per-session counter."""

    mean: float
    median: float
    max: int


@dataclass(frozen=True, slots=True)
class Report:
    """Figures over every row of one sessions table."""

    table_name: str
    generated_at: str
    live_sessions: int
    total_sessions: int
    sessions_per_day: dict[str, int]
    #: Rows created before the first of those days: with the per-day counts, every row.
    sessions_before_those_days: int
    views_per_session: Distribution
    events_per_session: Distribution
    identified_share: float
    bounce_share: float
    top_user_agents: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


def _distribution(connection: Connection, table: Table, column: str, total: int) -> Distribution:
    counter = table.c[column]
    if total == 0:
        return Distribution(0.0, 0.0, 0)
    mean, maximum = connection.execute(select(func.avg(counter), func.max(counter))).one()
    if mean is None:
        return Distribution(0.0, 0.0, 0)
    # The median from the one or two middle values: portable, and an index-free sort
    # of one integer column.
    middle = select(counter).order_by(counter).offset((total - 1) // 2).limit(2 - total % 2)
    values = connection.scalars(middle).all()
    median = sum(values) / len(values) if values else 0.0
    return Distribution(round(float(mean), 2), median, int(maximum))


def build_report(engine: Engine, table_name: str, now: datetime) -> Report:
    """Read the figures of ``table_name`` as of ``now`` (an aware datetime).

    Days are UTC days, whatever time zone ``now`` is given in.
    """
    now = validation.aware_utc(now, "now")
    table_name = validation.table_name(table_name)
    table = sessions_table(table_name)
    dialect = engine.dialect.name
    try:
        with snapshot(engine) as connection:
            if not inspect(connection).has_table(table_name):
                raise StoreUnavailable(
                    f"table {table_name!r} does not exist: run `sauce-sql migrate` first"
                )
            total, live, identified, bounced = connection.execute(
                select(
                    func.count(),
                    func.count(case((table.c.expires_at > now, 1))),
                    func.count(table.c.user_id),
                    func.count(case((table.c.view_sequence <= 1, 1))),
                )
            ).one()
            first_day = (now - timedelta(days=DAYS - 1)).date()
            days = {str(first_day + timedelta(days=i)): 0 for i in range(DAYS)}
            day = utc_day(table.c.created_at, dialect)
            since = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
                days=DAYS - 1
            )
            per_day = connection.execute(
                select(day, func.count()).where(table.c.created_at >= since).group_by(day)
            )
            for label, count in per_day:
                if label in days:
                    days[label] = count
            earlier = connection.scalar(
                select(func.count()).select_from(table).where(table.c.created_at < since)
            )
            agents = connection.execute(
                select(table.c.user_agent, func.count().label("n"))
                .group_by(table.c.user_agent)
                .order_by(func.count().desc(), table.c.user_agent)
                .limit(TOP_USER_AGENTS)
            ).all()
            return Report(
                table_name=table_name,
                generated_at=now.isoformat(),
                live_sessions=live,
                total_sessions=total,
                sessions_per_day=days,
                sessions_before_those_days=earlier or 0,
                views_per_session=_distribution(connection, table, "view_sequence", total),
                events_per_session=_distribution(connection, table, "event_sequence", total),
                identified_share=round(identified / total, 4) if total else 0.0,
                bounce_share=round(bounced / total, 4) if total else 0.0,
                top_user_agents=[{"user_agent": ua, "sessions": n} for ua, n in agents],
            )
    except SQLAlchemyError as exc:
        raise unavailable("cannot read the report", exc) from exc


def format_report(report: Report) -> str:
    """The report as aligned text for people."""

    def share(value: float) -> str:
        return f"{value * 100:.1f}%"

    def dist(d: Distribution) -> str:
        return f"mean {d.mean:.2f}   median {d.median:g}   max {d.max}"

    lines = [
        f"Sessions in table {report.table_name!r} at {report.generated_at}",
        "",
        f"  {'live sessions':<22}{report.live_sessions:>8}",
        f"  {'rows in table':<22}{report.total_sessions:>8}",
        f"  {'identified (user set)':<22}{share(report.identified_share):>8}",
        f"  {'bounces (<= 1 view)':<22}{share(report.bounce_share):>8}",
        f"  {'views per session':<22}{dist(report.views_per_session)}",
        f"  {'events per session':<22}{dist(report.events_per_session)}",
        "",
        "  Sessions started per day (UTC)",
    ]
    peak = max(report.sessions_per_day.values(), default=0) or 1
    for day, count in report.sessions_per_day.items():
        lines.append(f"    {day}  {count:>6}  {'#' * round(30 * count / peak)}")
    lines.append(f"    {'earlier':<10}  {report.sessions_before_those_days:>6}")
    lines += ["", "  Top user agents"]
    if not report.top_user_agents:
        lines.append("    (none)")
    for entry in report.top_user_agents:
        agent = entry["user_agent"] or "(empty)"
        agent = agent if len(agent) <= 60 else agent[:57] + "..."
        lines.append(f"    {entry['sessions']:>6}  {agent}")
    return "\n".join(lines)
