"""The HTML report: one self-contained page, checked as text and rendered in Chromium.

The page is rendered by a real headless Chromium (Debian's ``chromium``; CI installs
it) into a PNG screenshot, whose pixels are decoded here to see that the charts drew.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BACKENDS, Backend, FakeClock, StoreFactory, make_backend

from sauce_sql import ReviveSession, Store
from sauce_sql.report import build_report
from sauce_sql.report_html import CURRENT, render_html


@pytest.fixture(params=[p for p in BACKENDS if p.values != ("pgbouncer_statement",)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every backend but statement pooling, which refuses the report's snapshot."""
    yield from make_backend(request.param, tmp_path)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOUR = 3600.0


def filled(store: Store, clock: FakeClock) -> None:
    """Two weeks of visitors with varied browsers, views, users and some revivals."""
    agents = [
        "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1) Version/18.1 Mobile/15E148 Safari/604.1",
    ]
    n = 0
    for day in range(14):
        for _ in range(3 + (day * 7) % 11):
            n += 1
            sid = f"v{n}"
            store.new_session(sid, user_agent=agents[n % 3], user_id="u" if n % 4 == 0 else None)
            for _ in range(n % 5):
                store.inc_sequence(sid, "view")
            clock.advance(HOUR / 2)
        clock.advance(24 * HOUR - (3 + (day * 7) % 11) * HOUR / 2)
        store.cleanup()
        if day % 3 == 0:
            store.revive_session(ReviveSession(f"v{n - 1}"))


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], b""
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8, depth
    assert colour in (2, 6), colour
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = previous[x]
            c = previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(
            bytes(line) if bpp == 3 else bytes(line[i] for i in range(stride) if i % 4 != 3)
        )
        previous = line
    return width, height, rows


def test_the_page_is_self_contained(make_store: StoreFactory, clock: FakeClock) -> None:
    """The page has inline SVG charts, each with a table of its numbers, and no script,
    no external reference and nothing to fetch."""
    store = make_store(session_max_age=HOUR)
    filled(store, clock)
    report = build_report(store.engine, store.get_state().table_name, clock.now, days=14)
    page = render_html(report)
    assert page.count("<svg") == 5
    assert page.count("<table>") == 5
    assert "<script" not in page.lower()
    assert not re.search(r"\b(src|href)\s*=", page, re.IGNORECASE)
    assert "url(" not in page
    assert "@import" not in page
    # The only URL is the SVG namespace, which is a name, never fetched.
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    assert "default-src 'none'" in page  # and a CSP forbids fetching anything anyway
    for day in report.days:
        assert f"<td>{day.day}</td><td>{day.sessions}</td>" in page
    assert "Firefox" in page
    assert "Chrome" in page
    assert "Mozilla/5.0" not in page  # families, not raw user agents


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium(
    make_store: StoreFactory, clock: FakeClock, tmp_path: Path
) -> None:
    """Headless Chromium renders the page to a screenshot in which the bar colour of
    the charts covers a real area: the SVG drew."""
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (CI installs Debian's chromium)")
    store = make_store(session_max_age=HOUR)
    filled(store, clock)
    report = build_report(store.engine, store.get_state().table_name, clock.now, days=14)
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=900,3400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    copy = Path(__file__).resolve().parent.parent / ".screenshots"
    copy.mkdir(exist_ok=True)
    shutil.copy(shot, copy / "report.png")  # for a person to look at
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (900, 3400)
    blue = bytes(int(CURRENT[i : i + 2], 16) for i in (1, 3, 5))
    covered = sum(1 for row in rows for x in range(0, len(row), 3) if row[x : x + 3] == blue)
    assert covered > 2000, f"only {covered} pixels of the charts' colour"
    blank = sum(1 for row in rows if len(set(row)) == 1)
    assert blank < height * 0.8, "the page is mostly empty"
    print(f"FIGURES screenshot {width}x{height}: {covered} chart pixels")


def chart(page: str, title: str) -> str:
    """The SVG of the chart called ``title``."""
    match = re.search(rf'<svg[^>]*aria-label="{re.escape(title)}".*?</svg>', page)
    assert match is not None, title
    return match.group(0)


def y_ticks(svg: str) -> list[str]:
    """The y-axis labels of a chart, bottom first."""
    return re.findall(r'<text class="axis"[^>]*text-anchor="end">([^<]*)</text>', svg)


def test_small_previous_periods_empty_days_and_counts_read_right(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """A previous period of 2 sessions is given as "2 sessions", not as a percentage;
    ratio lines leave a gap on days without sessions rather than drop to 0; count
    charts have whole-number ticks."""
    store = make_store(session_max_age=HOUR)
    store.new_session("then-1")
    store.new_session("then-2")
    clock.advance(7 * 24 * HOUR)
    for day in range(6):
        for n in range(4 + day):
            sid = f"d{day}-{n}"
            store.new_session(sid)
            for _ in range(n % 3):
                store.inc_sequence(sid, "view")
        clock.advance(24 * HOUR)
    store.cleanup()
    store.revive_session(ReviveSession("d5-0"))  # one revival, today, on a day of no starts
    report = build_report(store.engine, store.get_state().table_name, clock.now, days=7)
    assert [d.sessions for d in report.days] == [4, 5, 6, 7, 8, 9, 0]
    assert sum(d.previous_sessions for d in report.days) == 2
    page = render_html(report)
    assert "2 sessions in the previous period" in page
    assert not re.search(r"[+-]\d+% on the previous period", page)
    views = chart(page, "Views per session")
    assert views.count("<circle") == 6  # no point for today, which has no sessions
    shares = chart(page, "Bounce and identified shares")
    assert shares.count("<circle") == 12
    for title in ("Sessions per day", "Revived sessions"):
        ticks = y_ticks(chart(page, title))
        assert len(ticks) == 5
        assert all(tick.replace(",", "").isdigit() for tick in ticks), (title, ticks)
    assert y_ticks(chart(page, "Revived sessions")) == ["0", "1", "2", "3", "4"]


def test_a_large_previous_period_is_compared_in_percent(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """With enough sessions before, the change is a percentage."""
    store = make_store(session_max_age=HOUR)
    for n in range(40):
        store.new_session(f"then-{n}")
    clock.advance(7 * 24 * HOUR)
    for n in range(50):
        store.new_session(f"now-{n}")
    report = build_report(store.engine, store.get_state().table_name, clock.now, days=7)
    assert "+25% on the previous period" in render_html(report)
