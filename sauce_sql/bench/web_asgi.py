"""The ASGI half of ``sauce-sql bench --web``: a bare ASGI app called as a server calls
it, alone and behind ``sauce_sql.asgi.SauceMiddleware`` on an ``AsyncStore`` (a SQLite
WAL file), interleaved on one event loop; medians' differences, in microseconds."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sauce_sql.bench.workloads import Latencies

__all__ = ["run_asgi"]

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.{}.{} Safari/537.36"
)
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/html; charset=utf-8")],
}
_BODY = {"type": "http.response.body", "body": b"<!doctype html><title>bench</title><p>hello</p>"}


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _scope(path: str = "/", **headers: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "query_string": b"",
        "client": ("203.0.113.7", 51234),
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }


async def _cookie_of(app: Any, scope: dict[str, Any]) -> str:
    cookies: list[str] = []

    async def send(message: Any) -> None:
        for name, value in message.get("headers", ()):
            if name == b"set-cookie":
                cookies.append(value.decode())

    await app(dict(scope), _receive, send)
    return cookies[0].split(";")[0]


async def _interleaved(
    contenders: dict[str, Callable[[], Awaitable[None]]], rounds: int, per_round: int
) -> dict[str, Latencies]:
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(rounds + 1):  # the first round warms up
        for name in names if round_ % 2 else names[::-1]:
            op = contenders[name]
            for _ in range(per_round):
                start = time.perf_counter_ns()
                await op()
                if round_:
                    samples[name].append(time.perf_counter_ns() - start)
    return {name: Latencies.of(values) for name, values in samples.items()}


async def _measure(store: Any, rounds: int, per_round: int) -> dict[str, Any]:
    from sauce_sql.asgi import SauceMiddleware

    await store.start()
    try:
        app = SauceMiddleware(_bare, store=store, secret_key="bench secret key, 32 bytes long")
        first = _scope(user_agent=CHROME.format(0, 0))
        visitors = [
            await _cookie_of(app, _scope(user_agent=CHROME.format(1, n)))
            for n in range((rounds + 1) * per_round)
        ]
        returning = _scope(user_agent=CHROME.format(0, 0), cookie=visitors[0])
        serial = itertools.count(1)

        async def ignore(message: Any) -> None:
            return None

        async def bare() -> None:
            await _bare(dict(returning), _receive, ignore)

        async def warm() -> None:
            await app(dict(returning), _receive, ignore)

        async def cold_agent() -> None:
            n = next(serial)
            scope = _scope(user_agent=CHROME.format(3, n), cookie=visitors[0])
            await app(scope, _receive, ignore)

        async def cold() -> None:
            n = next(serial)
            scope = _scope(user_agent=CHROME.format(2, n), cookie=visitors[n % len(visitors)])
            await app(scope, _receive, ignore)

        async def new() -> None:
            await app(dict(first), _receive, ignore)

        bot = _scope(user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)")

        async def skipped() -> None:
            await app(dict(bot), _receive, ignore)

        measured = await _interleaved(
            {
                "bare": bare,
                "warm": warm,
                "cold_agent": cold_agent,
                "cold": cold,
                "new": new,
                "bot": skipped,
            },
            rounds,
            per_round,
        )
    finally:
        await store.close()
    base = measured["bare"].median_us
    return {
        name: {
            "added_us": round(measured[name].median_us - base, 2),
            "p99_us": round(measured[name].p99_us, 2),
        }
        for name in ("warm", "cold_agent", "cold", "new", "bot")
    }


def run_asgi(directory: str, rounds: int, per_round: int) -> dict[str, Any]:
    """The ASGI figures, or ``{"skipped": why}`` without an ``AsyncStore``."""
    import sauce_sql

    async_store = getattr(sauce_sql, "AsyncStore", None)
    if async_store is None:
        return {"skipped": "this sauce_sql has no AsyncStore"}
    store = async_store(f"sqlite:///{Path(directory) / 'web_asgi.db'}", clean_interval=None)
    return asyncio.run(_measure(store, rounds, per_round))
