"""The report as one self-contained HTML page: inline SVG charts and CSS, no script.

Every chart is followed by a table of the numbers it draws, so the page reads without
the pictures too (screen readers, copy and paste), and the page asks for nothing over
the network: it can be mailed, archived or opened offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from sauce_sql.report_text import period_change

if TYPE_CHECKING:
    from sauce_sql.report import Report

__all__ = ["render_html"]

WIDTH, HEIGHT = 760, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 28
CURRENT, PREVIOUS, SECOND = "#2563eb", "#9ca3af", "#d97706"

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f8fafc;color:#0f172a}
main{max-width:820px;margin:0 auto;padding:24px 16px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 8px}
.sub{color:#475569;margin:0 0 20px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;
margin-bottom:20px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:22px}.card span{color:#475569;font-size:13px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:14px 16px;
margin-bottom:16px}
svg{width:100%;height:auto;display:block}
.legend{font-size:13px;color:#475569;margin:4px 0 8px}
.key{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px -1px 10px}
details{margin-top:8px}summary{cursor:pointer;color:#334155;font-size:14px}
table{border-collapse:collapse;font-size:13px;margin-top:6px;width:100%}
th,td{padding:2px 8px;text-align:right;border-bottom:1px solid #f1f5f9}
th:first-child,td:first-child{text-align:left}
.axis{font-size:11px;fill:#64748b}.grid{stroke:#e2e8f0}
"""


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _scale(peak: float, *, whole: bool = False) -> float:
    """A round top for the y axis, at or above ``peak``; with ``whole`` (counts) one
    whose four grid steps are whole numbers, so no tick reads 0.25 sessions."""
    if peak <= 0:
        return 4.0 if whole else 1.0
    if whole:
        power = 1
        while True:
            for factor in (1, 2, 5):
                if 4 * factor * power >= peak:
                    return float(4 * factor * power)
            power *= 10
    step = 10 ** (len(str(int(peak))) - 1)
    for nice in (1, 2, 2.5, 5, 10):
        if nice * step >= peak:
            return float(nice * step)
    return float(10 * step)


def _frame(labels: Sequence[str], top: float, percent: bool) -> list[str]:
    """Grid lines, y labels and a few x labels."""
    inner_h = HEIGHT - TOP - BOTTOM
    parts = []
    for i in range(5):
        value = top * i / 4
        y = TOP + inner_h * (1 - i / 4)
        text = f"{value * 100:.0f}%" if percent else _fmt(value)
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{text}</text>'
        )
    n = len(labels)
    step = (WIDTH - LEFT - RIGHT) / max(n, 1)
    for i in sorted({0, n // 2, n - 1}):
        if 0 <= i < n:
            x = LEFT + step * (i + 0.5)
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
                f"{escape(labels[i])}</text>"
            )
    return parts


def _svg(title: str, parts: list[str]) -> str:
    return (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def _points(values: Sequence[float | None], top: float) -> list[list[tuple[float, float]]]:
    """The runs of points of ``values``; a None (a day with nothing to divide by) has
    no point, and ends a run, so the line leaves a gap rather than drop to 0."""
    inner_h = HEIGHT - TOP - BOTTOM
    step = (WIDTH - LEFT - RIGHT) / max(len(values), 1)
    runs: list[list[tuple[float, float]]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((LEFT + step * (i + 0.5), TOP + inner_h * (1 - value / top)))
    return [run for run in runs if run]


def _bars(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    overlay: Sequence[float] | None = None,
) -> str:
    top = _scale(max([*values, *(overlay or [])], default=0), whole=True)
    parts = _frame(labels, top, percent=False)
    inner_h = HEIGHT - TOP - BOTTOM
    step = (WIDTH - LEFT - RIGHT) / max(len(values), 1)
    for i, value in enumerate(values):
        h = inner_h * value / top
        x = LEFT + step * i + step * 0.12
        parts.append(
            f'<rect x="{x:.1f}" y="{TOP + inner_h - h:.1f}" width="{step * 0.76:.1f}" '
            f'height="{h:.1f}" rx="1.5" fill="{CURRENT}"><title>{escape(labels[i])}: '
            f"{_fmt(value)}</title></rect>"
        )
    if overlay is not None:
        parts.append(_polyline(_points(overlay, top), PREVIOUS, dashed=True))
    return _svg(title, parts)


def _polyline(runs: list[list[tuple[float, float]]], colour: str, *, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="5 4"' if dashed else ""
    parts = []
    for points in runs:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        if not dashed:
            parts += [
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="{colour}"/>' for x, y in points
            ]
    return "".join(parts)


def _lines(
    title: str,
    labels: Sequence[str],
    series: list[tuple[Sequence[float | None], str]],
    percent: bool,
) -> str:
    peak = max((v for values, _ in series for v in values if v is not None), default=0)
    # Whole-number ticks once the values reach 1: "1.88 views" is no place to read off.
    top = 1.0 if percent else _scale(peak, whole=peak >= 1)
    parts = _frame(labels, top, percent)
    for values, colour in series:
        parts.append(_polyline(_points(values, top), colour))
    return _svg(title, parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return (
        f"<details open><summary>The numbers</summary><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></details>"
    )


def _legend(*keys: tuple[str, str]) -> str:
    items = "".join(
        f'<span class="key" style="background:{colour}"></span>{escape(text)}'
        for text, colour in keys
    )
    return f'<div class="legend">{items}</div>'


def _share(part: int, whole: int) -> float | None:
    """``part / whole``; None for a day without sessions, which has no share."""
    return part / whole if whole else None


def _percent(share: float | None) -> str:
    return "" if share is None else f"{share:.1%}"


def render_html(report: Report) -> str:
    """The report as one HTML page (a str), with nothing to fetch and no script."""
    days = report.days
    labels = [d.day[5:] for d in days]
    sessions = [d.sessions for d in days]
    previous = [d.previous_sessions for d in days]
    per_session = [round(d.views / d.sessions, 2) if d.sessions else None for d in days]
    bounce = [_share(d.bounces, d.sessions) for d in days]
    known = [_share(d.identified, d.sessions) for d in days]
    now_total, before_total = sum(sessions), sum(previous)
    change = period_change(now_total, before_total)
    cards = [
        (f"{report.live_sessions:,}", "live sessions now"),
        (f"{now_total:,}", f"sessions in {len(days)} days"),
        (f"{report.total_sessions:,}", "sessions ever recorded"),
        (f"{report.bounce_share * 100:.1f}%", f"bounces (at most 1 view), {len(days)} days"),
        (f"{report.identified_share * 100:.1f}%", f"identified (user set), {len(days)} days"),
        (f"{report.revived_sessions:,}", "revived sessions ever"),
    ]
    browsers = report.browsers[:8]
    browser_total = sum(b["sessions"] for b in report.browsers) or 1
    browser_bars = []
    bar_h = 22
    for i, entry in enumerate(browsers):
        w = (WIDTH - 220) * entry["sessions"] / max(browsers[0]["sessions"], 1)
        y = 8 + i * (bar_h + 8)
        browser_bars.append(
            f'<text class="axis" x="150" y="{y + 15}" text-anchor="end" style="font-size:13px">'
            f'{escape(entry["family"])}</text><rect x="160" y="{y}" width="{w:.1f}" '
            f'height="{bar_h}" rx="2" fill="{CURRENT}"/><text class="axis" x="{166 + w:.1f}" '
            f'y="{y + 15}" style="font-size:13px">{entry["sessions"] / browser_total:.0%}</text>'
        )
    browser_svg = (
        f'<svg viewBox="0 0 {WIDTH} {16 + len(browsers) * (bar_h + 8)}" role="img" '
        f'aria-label="Browsers" xmlns="http://www.w3.org/2000/svg">{"".join(browser_bars)}</svg>'
    )
    sections = [
        (
            "Sessions per day",
            _legend(
                ("this period", CURRENT),
                (f"previous period, same weekdays ({change})", PREVIOUS),
            )
            + _bars("Sessions per day", labels, sessions, previous)
            + _table(
                ["day", "sessions", "previous period day", "sessions then"],
                [(d.day, d.sessions, d.previous_day, d.previous_sessions) for d in days],
            ),
        ),
        (
            "Views per session",
            _lines("Views per session", labels, [(per_session, CURRENT)], percent=False)
            + _table(
                ["day", "views", "sessions", "views per session"],
                [
                    (d.day, d.views, d.sessions, "" if v is None else f"{v:.2f}")
                    for d, v in zip(days, per_session, strict=True)
                ],
            ),
        ),
        (
            "Bounce and identified shares",
            _legend(("bounces (at most 1 view)", CURRENT), ("identified", SECOND))
            + _lines(
                "Bounce and identified shares",
                labels,
                [(bounce, CURRENT), (known, SECOND)],
                percent=True,
            )
            + _table(
                ["day", "sessions", "bounces", "bounce share", "identified", "identified share"],
                [
                    (d.day, d.sessions, d.bounces, _percent(b), d.identified, _percent(k))
                    for d, b, k in zip(days, bounce, known, strict=True)
                ],
            ),
        ),
        (
            "Revived sessions",
            _bars("Revived sessions", labels, [d.revived for d in days])
            + _table(["day", "revived"], [(d.day, d.revived) for d in days]),
        ),
        (
            f"Browsers, {len(days)} days",
            browser_svg
            + _table(
                ["browser", "sessions", "share"],
                [
                    (b["family"], b["sessions"], f"{b['sessions'] / browser_total:.1%}")
                    for b in report.browsers
                ],
            ),
        ),
    ]
    body = "".join(
        f"<section><h2>{escape(title)}</h2>{content}</section>" for title, content in sections
    )
    card_html = "".join(
        f"<div class='card'><b>{v}</b><span>{escape(t)}</span></div>" for v, t in cards
    )
    title = f"Sessions in {report.table_name}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="sub">{escape(days[0].day)} to {escape(days[-1].day)} '
        f"({escape(report.timezone)}), as of {escape(report.generated_at[:16])} UTC. "
        "Counts cover every session ever recorded: live, archived and aggregated.</p>"
        f'<div class="cards">{card_html}</div>{body}</main></body></html>\n'
    )
