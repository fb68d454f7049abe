"""The report as text for a terminal: figures, and sparklines as wide as the terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sauce_sql.report import Distribution, Report

__all__ = ["MIN_PREVIOUS", "format_text", "period_change", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"
_LABEL = 24  # the label column of a sparkline row
_VALUE = 12  # the value column after it
#: Sessions the previous period needs before a change is given as a percentage: on
#: 3 sessions a "+3367%" says nothing that "3 then" does not say better.
MIN_PREVIOUS = 30


def period_change(now: int, before: int) -> str:
    """This period's sessions against the previous period's, in words."""
    if not before:
        return "no sessions in the previous period"
    if before < MIN_PREVIOUS:
        return f"{before} session{'s' if before != 1 else ''} in the previous period"
    return f"{(now - before) / before * 100:+.0f}% on the previous period"


def sparkline(values: Sequence[float], width: int) -> str:
    """``values`` as a row of at most ``width`` bar characters, scaled to the largest.

    More values than columns are added up into as many groups as fit, oldest first,
    so the row keeps the shape of the whole period.
    """
    if not values or width < 1:
        return ""
    if len(values) > width:
        size = -(-len(values) // width)  # ceiling: every group holds ``size`` values
        values = [sum(values[i : i + size]) / size for i in range(0, len(values), size)]
    peak = max(values)
    if peak <= 0:
        return _BARS[0] * len(values)
    top = len(_BARS) - 1
    return "".join(_BARS[round(top * max(value, 0) / peak)] for value in values)


def _share(value: float) -> str:
    return f"{value * 100:.1f}%"


def _dist(d: Distribution) -> str:
    return f"mean {d.mean:.2f}   median {d.median:g}   max {d.max}"


def format_text(report: Report, width: int = 80) -> str:
    """The report as aligned text; sparklines fill ``width`` columns."""
    days = report.days
    spark = max(width - _LABEL - _VALUE - 6, 8)

    def row(label: str, values: Sequence[float], last: str) -> str:
        return f"  {label:<{_LABEL}}{sparkline(values, spark)}  {last:>{_VALUE}}"

    sessions = [d.sessions for d in days]
    views_per = [d.views / d.sessions if d.sessions else 0.0 for d in days]
    bounce = [d.bounces / d.sessions if d.sessions else 0.0 for d in days]
    known = [d.identified / d.sessions if d.sessions else 0.0 for d in days]
    revived = [d.revived for d in days]
    previous = sum(d.previous_sessions for d in days)
    change = period_change(sum(sessions), previous)
    lines = [
        f"Sessions in table {report.table_name!r} at {report.generated_at}",
        "",
        f"  {'live sessions':<{_LABEL}}{report.live_sessions:>8}",
        f"  {'sessions ever recorded':<{_LABEL}}{report.total_sessions:>8}",
        f"  {'revived sessions ever':<{_LABEL}}{report.revived_sessions:>8}",
        "",
        f"  Sessions of the last {len(days)} days",
        f"  {'identified (user set)':<{_LABEL}}{_share(report.identified_share):>8}",
        f"  {'bounces (<= 1 view)':<{_LABEL}}{_share(report.bounce_share):>8}",
        f"  {'views per session':<{_LABEL}}{_dist(report.views_per_session)}",
        f"  {'events per session':<{_LABEL}}{_dist(report.events_per_session)}",
        "",
        f"  Last {len(days)} days ({report.timezone}), {days[0].day} to {days[-1].day}: "
        f"{sum(sessions)} sessions, {change}",
        row("sessions per day", sessions, f"{sessions[-1]} today"),
        row("previous period", [d.previous_sessions for d in days], f"{previous} in all"),
        row("views per session", views_per, f"{views_per[-1]:.2f} today"),
        row("bounce share", bounce, f"{_share(bounce[-1])} today"),
        row("identified share", known, f"{_share(known[-1])} today"),
        row("revived sessions", revived, f"{revived[-1]} today"),
        "",
        "  Sessions started per day",
    ]
    peak = max(sessions, default=0) or 1
    bar = max(width - 30, 10)
    for d in days:
        lines.append(f"    {d.day}  {d.sessions:>7}  {'#' * round(bar * d.sessions / peak)}")
    lines.append(f"    {'earlier':<10}  {report.sessions_before_those_days:>7}")
    lines += ["", f"  Browsers, last {len(days)} days"]
    if not report.browsers:
        lines.append("    (none)")
    for entry in report.browsers:
        lines.append(f"    {entry['sessions']:>7}  {entry['family']}")
    return "\n".join(lines)
