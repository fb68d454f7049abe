"""``sauce-sql bench --web``: what the web middleware adds to a request, on this machine.

A bare WSGI app answering a small HTML page is called the way a server calls it (a
fresh environ, start_response, the body iterated and closed), alone and behind
``sauce_sql.wsgi.SauceMiddleware`` on a SQLite WAL file, interleaved round by round;
the figures are the medians' differences. Measured: a returning visitor's page view
with the user-agent check warm (cached) and cold (a user agent never seen before), a
new visitor's first view, and skipped requests (bot, probe path, static file,
prefetch), with the store calls they make counted. Then the crawler check alone on
human user agents it has not seen: the index against the list's own ``is_crawler``;
then the same for ASGI (``web_asgi.py``) when this sauce_sql has an ``AsyncStore``.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from sauce_sql.bench import workloads as work
from sauce_sql.bench.clients import Operation
from sauce_sql.bench.web_asgi import run_asgi
from sauce_sql.store import Store

__all__ = ["format_web", "run_web"]

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.{}.{} Safari/537.36"
)
TARGET_VIEW_US, TARGET_SKIP_US = 60.0, 5.0


def _bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [b"<!doctype html><title>bench</title><p>hello</p>"]


def _ignore(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def _call(app: Any, environ: dict[str, Any]) -> None:
    result = app(environ, _ignore)
    for _chunk in result:
        pass
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _CountingStore:
    """The store, counting the calls the middleware makes on it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return attribute(*args, **kwargs)

        return counted


def _skipped(app: Any, environ: dict[str, Any], _: str) -> None:
    _call(app, dict(environ))


def _cookie_of(app: Any, environ: dict[str, Any]) -> str:
    """A new visitor's first view through ``app``: its ``name=value`` cookie."""
    cookies: list[str] = []

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        cookies.extend(value for name, value in headers if name == "Set-Cookie")

    result = app(environ, capture)
    result.close()
    return cookies[0].split(";")[0]


def _environ(path: str = "/", **headers: str) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "203.0.113.7",
        "wsgi.url_scheme": "http",
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper()] = value
    return environ


def run_web(directory: str | None = None, rounds: int = 10, per_round: int = 400) -> dict[str, Any]:
    """Measure; the figures as a JSON-ready dict (microseconds)."""
    from sauce_sql.wsgi import SauceMiddleware

    with tempfile.TemporaryDirectory(prefix="sauce-sql-bench-web-", dir=directory) as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'web.db'}", clean_interval=None).start()
        counting = _CountingStore(store)
        try:
            secret = "bench secret key, 32 bytes long"
            # Views go to the store itself; skipped requests to one that counts calls.
            app = SauceMiddleware(_bare, store=store, secret_key=secret)
            counted_app = SauceMiddleware(_bare, store=cast(Store, counting), secret_key=secret)
            first = _environ(USER_AGENT=CHROME.format(0, 0))
            # Returning visitors: one cookie each, their sessions live in the store.
            visitors = [
                _cookie_of(app, _environ(USER_AGENT=CHROME.format(1, n)))
                for n in range((rounds + 1) * per_round)
            ]
            returning = _environ(USER_AGENT=CHROME.format(0, 0), COOKIE=visitors[0])
            serial = itertools.count(1)
            sid = visitors[0].split("=", 1)[1].split(".")[0]

            def bare(_: str) -> None:
                _call(_bare, dict(returning))

            def warm(_: str) -> None:
                _call(app, dict(returning))

            def cold_agent(_: str) -> None:
                # A returning visitor (its cookie checked before) with a user agent never
                # seen: the crawler check runs cold.
                n = next(serial)
                environ = dict(returning)
                environ["HTTP_USER_AGENT"] = CHROME.format(3, n)
                _call(app, environ)

            def cold(_: str) -> None:
                # A visitor first seen by this process, with a user agent never seen: the
                # crawler check and the cookie's HMAC run cold, on another row.
                n = next(serial)
                environ = dict(returning)
                environ["HTTP_USER_AGENT"] = CHROME.format(2, n)
                environ["HTTP_COOKIE"] = visitors[n % len(visitors)]
                _call(app, environ)

            def new_visitor(_: str) -> None:
                _call(app, dict(first))

            def inc_alone(_: str) -> None:
                store.inc_sequence(sid, "view")

            ids = ["x"]
            views = work.interleaved(
                {
                    "bare": bare,
                    "warm": warm,
                    "cold_agent": cold_agent,
                    "cold": cold,
                    "new": new_visitor,
                    "inc": inc_alone,
                },
                ids,
                rounds=rounds,
                per_round=per_round,
            )
            skipped_requests = {
                "bot": _environ(USER_AGENT="Mozilla/5.0 (compatible; Googlebot/2.1)"),
                "probe": _environ("/healthz", USER_AGENT="kube-probe/1.30"),
                "static": _environ("/static/app.css", USER_AGENT=CHROME.format(0, 0)),
                "prefetch": _environ(USER_AGENT=CHROME.format(0, 0), SEC_PURPOSE="prefetch"),
            }
            skip_ops: dict[str, Operation] = {"bare": bare}
            for name, environ in skipped_requests.items():
                skip_ops[name] = functools.partial(_skipped, counted_app, environ)
            calls_before = counting.calls
            skips = work.interleaved(skip_ops, ids, rounds=rounds, per_round=per_round)
            skip_calls = counting.calls - calls_before
        finally:
            store.close()
    base = views["bare"].median_us
    figures: dict[str, Any] = {
        "bare_us": round(base, 2),
        "views": {
            name: {
                "added_us": round(views[name].median_us - base, 2),
                "median_us": round(views[name].median_us, 2),
                "p99_us": round(views[name].p99_us, 2),
            }
            for name in ("warm", "cold_agent", "cold", "new")
        },
        "store_inc_sequence_us": round(views["inc"].median_us, 2),
        "skipped": {
            name: {
                "added_us": round(skips[name].median_us - skips["bare"].median_us, 2),
                "p99_us": round(skips[name].p99_us, 2),
            }
            for name in skipped_requests
        },
        "skipped_store_calls": skip_calls,
        # Every skipped request sent, the warm-up round's included.
        "skipped_requests": (rounds + 1) * per_round * len(skipped_requests),
    }
    figures["bot_check"] = _bot_check()
    with tempfile.TemporaryDirectory(prefix="sauce-sql-bench-asgi-", dir=directory) as tmp:
        figures["asgi"] = run_asgi(tmp, rounds, per_round)
    return figures


def _bot_check(count: int = 400) -> dict[str, Any]:
    """The crawler check on human user agents never seen before: the index, and the
    list's own matcher, in microseconds per user agent."""
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA, is_crawler

    from sauce_sql.web.bots import crawler_index

    index = crawler_index()
    ours, theirs = [], []
    for n in range(count):
        agent = CHROME.format(7000 + n, n)
        start = time.perf_counter_ns()
        index.search(agent)
        ours.append(time.perf_counter_ns() - start)
        start = time.perf_counter_ns()
        is_crawler(agent)
        theirs.append(time.perf_counter_ns() - start)
    return {
        "patterns": len(CRAWLER_USER_AGENTS_DATA),
        "index_us": round(statistics.median(ours) / 1000, 2),
        "list_is_crawler_us": round(statistics.median(theirs) / 1000, 2),
    }


def format_web(figures: dict[str, Any]) -> str:
    """The figures as the table the command prints."""
    views, skipped, bot = figures["views"], figures["skipped"], figures["bot_check"]
    labels = {
        "warm": "page view, returning visitor, user agent seen before",
        "cold_agent": "page view, returning visitor, user agent never seen",
        "cold": "page view, visitor and user agent never seen before",
        "new": "first page view of a new visitor (creates its row)",
    }
    store_us = figures["store_inc_sequence_us"]
    lines = [
        "Web middleware (WSGI, no framework) on a SQLite WAL file; microseconds, medians,",
        f"added over the bare app (bare app: {figures['bare_us']:.1f} us per request)",
        f"  {'request':54} {'added':>7} {'p99':>8}  target",
    ]
    for name, label in labels.items():
        row = views[name]
        target = f"<= {TARGET_VIEW_US:.0f}" if name != "new" else ""
        ratio = f" ({row['added_us'] / TARGET_VIEW_US:.2f}x)" if target else ""
        lines.append(f"  {label:54} {row['added_us']:7.1f} {row['p99_us']:8.1f}  {target}{ratio}")
    lines.append(
        f"  (of which the store's own inc_sequence: {store_us:.1f} us; the middleware's"
        f" share of a warm view: {views['warm']['added_us'] - store_us:.1f} us)"
    )
    for name, row in skipped.items():
        label = f"skipped: {name}"
        ratio = row["added_us"] / TARGET_SKIP_US
        lines.append(
            f"  {label:54} {row['added_us']:7.1f} {row['p99_us']:8.1f}"
            f"  <= {TARGET_SKIP_US:.0f} ({ratio:.2f}x)"
        )
    lines.append(
        f"  store calls made by {figures['skipped_requests']} skipped requests: "
        f"{figures['skipped_store_calls']}"
    )
    asgi = figures["asgi"]
    if "skipped" in asgi:
        lines.append(f"ASGI middleware on an AsyncStore: skipped ({asgi['skipped']})")
    else:
        lines.append(
            "ASGI middleware on an AsyncStore (a SQLite WAL file), added over a bare ASGI app:"
        )
        for name, label in [*labels.items(), ("bot", "skipped: bot")]:
            limit = TARGET_SKIP_US if name == "bot" else TARGET_VIEW_US
            row = asgi[name]
            ratio = row["added_us"] / limit
            suffix = "" if name == "new" else f"  <= {limit:.0f} ({ratio:.2f}x)"
            lines.append(f"  {label:54} {row['added_us']:7.1f} {row['p99_us']:8.1f}{suffix}")
    lines.append(
        f"Crawler check of a human user agent never seen before ({bot['patterns']} patterns):"
        f" {bot['index_us']:.1f} us indexed, {bot['list_is_crawler_us']:.1f} us with the"
        f" list's own is_crawler ({bot['list_is_crawler_us'] / bot['index_us']:.1f}x)"
    )
    return "\n".join(lines)
