"""The asyncio part of the bench: AsyncStore beside Store, aiosqlite and raw drivers.

Every contender runs the same statements on the same table, interleaved in one event
loop (a sync call inside a coroutine is a call on the loop), so that the machine's
noise falls on all of them alike. aiosqlite and asyncpg are measured when installed
(``pip install aiosqlite asyncpg``), and skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sauce_sql.aio import AsyncStore
from sauce_sql.backends.sqlite.dialect import datetime_to_sqlite
from sauce_sql.bench.aio_lag import LoopClock, lag_under_tasks, lag_while_locked, run_timed
from sauce_sql.bench.clients import (
    USER_AGENT,
    RawSQLite,
    _libpq_url,
    _sql,
    store_ops,
    store_table_names,
)
from sauce_sql.bench.workloads import Latencies
from sauce_sql.store import Store

__all__ = ["asyncio_postgres", "asyncio_sqlite"]

AsyncOp = Callable[[str], Awaitable[Any]]
#: Tasks, and the rounds of their throughput (each contender in turn).
TASKS = 64
TASK_ROUNDS = 6
_UTC = timezone.utc
MAX_AGE = 3600.0


def _async_ops(store: AsyncStore) -> dict[str, AsyncOp]:
    return {
        "inc_sequence": lambda sid: store.inc_sequence(sid, "view"),
        "lookup_session": store.lookup_session,
    }


async def _interleaved(
    contenders: dict[str, Callable[[str], Any]],
    ids: Sequence[str],
    *,
    rounds: int,
    per_round: int,
) -> dict[str, dict[str, float]]:
    """Each contender ``per_round`` calls per round, taking turns (the first round a
    warm-up); a contender returning an awaitable is awaited."""
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    names = list(contenders)
    clock = time.perf_counter_ns
    position = 0
    for round_ in range(rounds + 1):
        for name in names if round_ % 2 else names[::-1]:
            op, into = contenders[name], samples[name]
            for i in range(per_round):
                sid = ids[(position + i) % len(ids)]
                start = clock()
                result = op(sid)
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    await result
                if round_:
                    into.append(clock() - start)
        position += per_round
    return {name: Latencies.of(got).to_dict() for name, got in samples.items()}


async def _aiosqlite_ops(path: Path, raw: RawSQLite) -> tuple[dict[str, AsyncOp], Any] | str:
    try:
        import aiosqlite
    except ImportError:
        return "aiosqlite is not installed (pip install aiosqlite)"
    connection = await aiosqlite.connect(str(path), isolation_level=None)
    await connection.execute("PRAGMA synchronous = NORMAL")
    select, inc = raw.sql["select_live"], raw.sql["increment_view"]
    max_age = timedelta(seconds=MAX_AGE)

    async def inc_sequence(sid: str) -> Any:
        now = datetime.now(_UTC)
        text, expires = datetime_to_sqlite(now), datetime_to_sqlite(now + max_age)
        async with connection.execute(inc, (1, text, expires, sid, text)) as cursor:
            return await cursor.fetchone()

    async def lookup_session(sid: str) -> Any:
        now = datetime_to_sqlite(datetime.now(_UTC))
        async with connection.execute(select, (sid, now)) as cursor:
            return await cursor.fetchone()

    return {"inc_sequence": inc_sequence, "lookup_session": lookup_session}, connection


def asyncio_sqlite(directory: Path, ids_count: int, rounds: int, per_round: int) -> dict[str, Any]:
    """AsyncStore on a SQLite WAL file against Store, aiosqlite and raw sqlite3."""
    path = directory / "bench-async.db"
    url = f"sqlite:///{path}"
    result: dict[str, Any] = {"skipped": {}}

    async def main(clock: LoopClock) -> None:
        with Store(url, table_name="bench", clean_interval=None) as sync:
            ids = [sync.new_session(user_agent=USER_AGENT).session_id for _ in range(ids_count)]
            async with AsyncStore(url, table_name="bench", clean_interval=None) as store:
                raw = RawSQLite(str(path), "bench", max_age=MAX_AGE, synchronous="NORMAL")
                contenders: dict[str, dict[str, Callable[[str], Any]]] = {}
                sync_ops, raw_ops = store_ops(sync), raw.ops()
                for op, call in _async_ops(store).items():
                    contenders[op] = {"async": call, "sync": sync_ops[op], "raw": raw_ops[op]}
                aio = await _aiosqlite_ops(path, raw)
                if isinstance(aio, str):
                    result["skipped"]["aiosqlite"] = aio
                else:
                    for op, call in aio[0].items():
                        contenders[op]["aiosqlite"] = call
                try:
                    result["single"] = {
                        op: await _interleaved(c, ids, rounds=rounds, per_round=per_round)
                        for op, c in contenders.items()
                    }
                finally:
                    raw.close()
                    if not isinstance(aio, str):
                        await aio[1].close()
                result["lag_16_tasks_ms"] = await lag_under_tasks(store, ids, 1.0)
                result["lag_while_locked"] = await lag_while_locked(store, path, ids[0], clock)

    run_timed(main)
    return result


async def _pool_throughput(
    call: Callable[[str], Awaitable[Any]], ids: Sequence[str], seconds: float
) -> dict[str, float]:
    """64 tasks making ``call`` flat out for ``seconds``: calls per second, and how
    evenly the tasks were served (the median task's calls, the longest call)."""
    end = time.perf_counter() + seconds
    calls = [0] * TASKS
    longest = [0.0]

    async def work(n: int) -> None:
        sid = ids[n % len(ids)]
        while (start := time.perf_counter()) < end:
            await call(sid)
            longest[0] = max(longest[0], time.perf_counter() - start)
            calls[n] += 1

    began = time.perf_counter()
    await asyncio.gather(*(work(n) for n in range(TASKS)))
    return {
        "ops_per_s": sum(calls) / (time.perf_counter() - began),
        "median_task_calls": statistics.median(calls),
        "longest_call_ms": longest[0] * 1000,
    }


def _queue_pool(connections: Sequence[Any], call: Callable[[Any, str], Awaitable[Any]]) -> AsyncOp:
    """A hand-rolled pool: an ``asyncio.Queue`` of connections. A task that gives one
    back and asks again takes it back before a waiter wakes (the queue lets it), so
    the same few tasks keep the connections while the rest wait."""
    pool: asyncio.Queue[Any] = asyncio.Queue()
    for connection in connections:
        pool.put_nowait(connection)

    async def pooled(sid: str) -> Any:
        connection = await pool.get()
        try:
            return await call(connection, sid)
        finally:
            pool.put_nowait(connection)

    return pooled


def asyncio_postgres(
    url: str, ids_count: int, rounds: int, per_round: int, task_seconds: float
) -> dict[str, Any]:
    """AsyncStore on PostgreSQL against raw psycopg AsyncConnection and asyncpg, and
    64 tasks on it against pools of connections, ``task_seconds`` a turn."""
    import psycopg
    from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
    from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

    result: dict[str, Any] = {"skipped": {}}
    dsn = _libpq_url(url)
    table = f"bench_async_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        with Store(url, table_name=table, clean_interval=None) as sync:
            ids = [sync.new_session(user_agent=USER_AGENT).session_id for _ in range(ids_count)]
        sql = _sql(table, pg_dialect.dialect())  # type: ignore[no-untyped-call]
        select, inc = sql["select_live"][0], sql["increment_view"][0]
        dollar = _sql(table, asyncpg_dialect.dialect())  # type: ignore[no-untyped-call]
        max_age = timedelta(seconds=MAX_AGE)

        options: dict[str, Any] = {"table_name": table, "clean_interval": None}
        # asyncpg as the store runs it by default (no statement cache: PgBouncer-safe),
        # and with prepared statements, as a URL saying the pooler takes them asks.
        on_asyncpg = AsyncStore(_asyncpg_url(url), **options)
        prepared = AsyncStore(_asyncpg_url(url, prepare_threshold="0"), **options)
        async with AsyncStore(url, **options) as store, on_asyncpg, prepared:
            contenders: dict[str, dict[str, Callable[[str], Any]]] = {
                op: {"async": call} for op, call in _async_ops(store).items()
            }
            for op, call in _async_ops(on_asyncpg).items():
                contenders[op]["async_asyncpg"] = call
            for op, call in _async_ops(prepared).items():
                contenders[op]["async_asyncpg_prepared"] = call
            connection = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, prepare_threshold=None
            )
            await connection.execute("SET TIME ZONE 'UTC'")
            own_cursor = connection.cursor()
            dollar_inc, dollar_select = dollar["increment_view"][0], dollar["select_live"][0]

            def psycopg_ops(cursor_of: Callable[[], Any]) -> dict[str, Callable[[str], Any]]:
                async def psycopg_inc(sid: str) -> Any:
                    now = datetime.now(_UTC)
                    values = {
                        "view_sequence_1": 1,
                        "now": now,
                        "expires": now + max_age,
                        "sid": sid,
                    }
                    cursor = cursor_of()
                    await cursor.execute(inc, values)
                    return await cursor.fetchone()

                async def psycopg_lookup(sid: str) -> Any:
                    cursor = cursor_of()
                    await cursor.execute(select, {"sid": sid, "now": datetime.now(_UTC)})
                    return await cursor.fetchone()

                return {"inc_sequence": psycopg_inc, "lookup_session": psycopg_lookup}

            def asyncpg_ops(connection_of: Callable[[], Any]) -> dict[str, Callable[[str], Any]]:
                async def asyncpg_inc(sid: str) -> Any:
                    now = datetime.now(_UTC)
                    return await connection_of().fetchrow(dollar_inc, 1, now, now + max_age, sid)

                async def asyncpg_lookup(sid: str) -> Any:
                    return await connection_of().fetchrow(dollar_select, sid, datetime.now(_UTC))

                return {"inc_sequence": asyncpg_inc, "lookup_session": asyncpg_lookup}

            raws = {"psycopg": psycopg_ops(_given(own_cursor))}
            asyncpgs = [await _asyncpg(dsn, result, cache) for cache in (100, 0)]
            for name, raw in zip(("asyncpg", "asyncpg_uncached"), asyncpgs, strict=True):
                if raw is not None:
                    raws[name] = asyncpg_ops(_given(raw))
            # The driver's own calls on the store's own connection too: the same server
            # session as the store's calls. A connection of its own can get a server
            # process on the other CPU, whose every round trip then costs a wake-up of
            # that CPU: on a 2-CPU VM that moved a lookup between 30 and 115 us.
            for name, ours, build in (
                ("psycopg_same", store, psycopg_ops),
                ("asyncpg_same", prepared, asyncpg_ops),
                ("asyncpg_uncached_same", on_asyncpg, asyncpg_ops),
            ):
                await ours.lookup_session(ids[0])
                raws[name] = build(_store_cursor(ours))
            for name, ops in raws.items():
                for op, call in ops.items():
                    contenders[op][name] = call
            try:
                result["single"] = {
                    op: await _interleaved(c, ids, rounds=rounds, per_round=per_round)
                    for op, c in contenders.items()
                }
            finally:
                await connection.close()
                for raw in asyncpgs:
                    if raw is not None:
                        await raw.close()
            pool = [
                await psycopg.AsyncConnection.connect(dsn, autocommit=True, prepare_threshold=None)
                for _ in range(10)
            ]

            async def pooled_inc(conn: Any, sid: str) -> Any:
                now = datetime.now(_UTC)
                values = {"view_sequence_1": 1, "now": now, "expires": now + max_age, "sid": sid}
                cur = await conn.execute(inc, values)
                return await cur.fetchone()

            callers: dict[str, AsyncOp] = {
                "store": lambda sid: store.inc_sequence(sid, "view"),
                "queue_pool": _queue_pool(pool, pooled_inc),
            }
            driver_pool = await _driver_pool(dsn, result, 10)
            if driver_pool is not None:

                async def driver_pooled(sid: str) -> Any:
                    async with driver_pool.connection() as conn:
                        return await pooled_inc(conn, sid)

                callers["driver_pool"] = driver_pooled
            try:
                # Rounds in alternating order: the server's commits (fsyncs) change
                # speed from one second to the next on a shared machine.
                turns: dict[str, list[dict[str, float]]] = {name: [] for name in callers}
                names = list(callers)
                for round_ in range(TASK_ROUNDS):
                    for name in names if round_ % 2 else names[::-1]:
                        got = await _pool_throughput(callers[name], ids, task_seconds)
                        turns[name].append(got)
                result["tasks_64"] = {
                    name: {
                        figure: statistics.median(r[figure] for r in rounds) for figure in rounds[0]
                    }
                    for name, rounds in turns.items()
                }
                result["tasks_64_rounds"] = turns
                result["task_seconds"] = task_seconds
            finally:
                for conn in pool:
                    await conn.close()
                if driver_pool is not None:
                    await driver_pool.close()

    try:
        asyncio.run(main())
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            for name in store_table_names(table):
                connection.execute(f"DROP TABLE IF EXISTS {name}")
    return result


def _given(value: Any) -> Callable[[], Any]:
    """A function giving ``value``: a raw contender's own connection or cursor."""
    return lambda: value


def _store_cursor(store: AsyncStore) -> Callable[[], Any]:
    """A function giving what ``store``'s next call would run its statement through:
    its idle connection's cursor (asyncpg: the connection). Calls made with it between
    the store's own (one task) run on the store's connection and server session."""
    from sauce_sql.backends.postgresql.aio import AsyncServerExecutor

    executor = store._executor  # noqa: SLF001
    if not isinstance(executor, AsyncServerExecutor):
        raise TypeError(f"not a PostgreSQL store: {executor!r}")

    def cursor() -> Any:
        got = executor.idle_cursor()
        if got is None:
            raise RuntimeError("the store holds no idle connection")
        return got

    return cursor


def _asyncpg_url(url: str, **query: str) -> str:
    from sqlalchemy import make_url

    parsed = make_url(url).set(drivername="postgresql+asyncpg").update_query_dict(query)
    return parsed.render_as_string(hide_password=False)


async def _driver_pool(dsn: str, result: dict[str, Any], size: int) -> Any:
    """psycopg's own pool of ``size`` connections, as an application would make it."""
    try:
        from psycopg_pool import AsyncConnectionPool
    except ImportError:
        result["skipped"]["psycopg_pool"] = (
            "psycopg-pool is not installed (pip install psycopg-pool)"
        )
        return None

    async def utc(connection: Any) -> None:
        await connection.execute("SET TIME ZONE 'UTC'")

    pool: Any = AsyncConnectionPool(
        dsn,
        min_size=size,
        max_size=size,
        kwargs={"autocommit": True, "prepare_threshold": None},
        configure=utc,
        open=False,
    )
    await pool.open(wait=True)
    return pool


async def _asyncpg(dsn: str, result: dict[str, Any], cache: int) -> Any:
    try:
        import asyncpg
    except ImportError:
        result["skipped"]["asyncpg"] = "asyncpg is not installed (pip install asyncpg)"
        return None
    connection = await asyncpg.connect(dsn, statement_cache_size=cache)
    await connection.execute("SET TIME ZONE 'UTC'")
    return connection


def async_targets(results: dict[str, Any]) -> list[tuple[str, float, float, str]]:
    """The asyncio targets (issue 10) the run has figures for: (name, measured,
    limit, unit), each to be at most its limit but for ops/s."""
    found: list[tuple[str, float, float, str]] = []
    lite = results.get("sqlite")
    if lite:
        for op, figures in lite["single"].items():
            ratio = figures["async"]["median_us"] / figures["sync"]["median_us"]
            found.append((f"asyncio sqlite {op} / Store (median)", ratio, 1.3, "x"))
        # The loop's longest turn, not the ticking task's worst gap: the gap holds the
        # machine's own stalls, which the same loop with no store call shows too.
        turn = lite["lag_while_locked"]["longest_turn_ms"]
        name = "asyncio sqlite loop held, lock held 1 s elsewhere (median)"
        found.append((name, turn, 2.0, "ms"))
    pg = results.get("postgresql")
    if pg:
        # Like against like: the store on each driver and setting against that raw
        # driver's own call, on the store's connection (the same server session).
        pairs = {
            "psycopg": ("async", "psycopg_same"),
            "asyncpg, no statement cache": ("async_asyncpg", "asyncpg_uncached_same"),
            "asyncpg, prepared statements": ("async_asyncpg_prepared", "asyncpg_same"),
        }
        for op, figures in pg["single"].items():
            for label, (ours, raw) in pairs.items():
                if ours in figures and raw in figures:
                    ratio = figures[ours]["median_us"] / figures[raw]["median_us"]
                    found.append((f"asyncio postgresql {op} / raw {label}", ratio, 1.15, "x"))
        # The driver's own pool serves its waiters in turn, as the store does; the
        # hand-rolled queue is the baseline only where psycopg-pool is not installed.
        tasks = pg["tasks_64"]
        pool = "driver_pool" if "driver_pool" in tasks else "queue_pool"
        found.append(
            (
                f"asyncio postgresql 64 tasks ops/s, at least {_POOLS[pool]}'s",
                tasks["store"]["ops_per_s"],
                tasks[pool]["ops_per_s"],
                "ops/s",
            )
        )
    return found


_POOLS = {
    "store": "the store (10 connections)",
    "driver_pool": "psycopg_pool.AsyncConnectionPool of 10",
    "queue_pool": "an asyncio.Queue of 10 psycopg connections",
}


def async_lines(results: dict[str, Any]) -> list[str]:
    """The asyncio figures as report lines."""
    lines: list[str] = []
    for part, title in (("sqlite", "SQLite WAL file"), ("postgresql", "PostgreSQL")):
        figures = results.get(part)
        if not figures:
            continue
        for what, why in figures["skipped"].items():
            lines.append(f"skipped asyncio {part} {what}: {why}")
        lines.append(f"asyncio, {title}, one task (median us):")
        for op, contenders in figures["single"].items():
            row = ", ".join(f"{name} {v['median_us']:.1f}" for name, v in contenders.items())
            lines.append(f"  {op:<16} {row}")
        if part == "sqlite":
            locked = figures["lag_while_locked"]
            rounds = ", ".join(f"{v:.2f}" for v in locked["worst_stall_ms_rounds"])
            idle = ", ".join(f"{v:.2f}" for v in locked["no_call_stall_ms_rounds"])
            turns = ", ".join(f"{v:.2f}" for v in locked["longest_turn_ms_rounds"])
            less = "less its waits for a CPU" if locked["runqueue_subtracted"] else "as timed"
            lines.extend(
                (
                    f"  loop: worst stall {locked['worst_stall_ms']:.2f} ms (median of {rounds})"
                    f" while another process held the write lock and a write waited"
                    f" {locked['write_took_ms']:.0f} ms; the same loop with no store call:"
                    f" {locked['no_call_stall_ms']:.2f} ms ({idle});"
                    f" {figures['lag_16_tasks_ms']:.1f} ms between ticks with 16 tasks"
                    " writing flat out",
                    f"  loop held: its longest turn {locked['longest_turn_ms']:.2f} ms"
                    f" (median of {turns}; {less}); with no store call"
                    f" {locked['no_call_longest_turn_ms']:.2f} ms",
                )
            )
        else:
            lines.append(
                f"  {TASKS} tasks incrementing (medians of {TASK_ROUNDS} rounds of"
                f" {figures['task_seconds']:g} s, in turn):"
            )
            for name, got in figures["tasks_64"].items():
                lines.append(
                    f"    {_POOLS[name]:<44} {got['ops_per_s']:6.0f} ops/s;"
                    f" the median task made {got['median_task_calls']:.0f} calls,"
                    f" the longest took {got['longest_call_ms']:.0f} ms"
                )
    return lines
