"""``sauce-sql bench``: the store against the raw drivers and Redis, on this machine.

Like pgbench and redis-benchmark, it ships with the package. It measures, on tables of
the same layout and interleaved so that a busy machine's noise falls on all alike:

1. every operation single-client against the stdlib ``sqlite3`` driver in autocommit on
   a WAL file, against psycopg on PostgreSQL, and ``inc_sequence`` against redis-py;
2. 4 threads and 4 processes incrementing at once on one SQLite file;
3. ``durability="full"`` (an fsync per commit) alone and with 4 threads;
4. cleanup of many expired rows while a writer runs, against one DELETE;
5. on PostgreSQL, the share of HOT updates and the growth of table and indexes under
   steady increments, the store's against an increment that moves expires_at each time;
6. 8 processes of 8 threads straight at PostgreSQL and through a PgBouncer of its own
   in transaction mode (pool 20), counts checked;
7. AsyncStore beside Store, aiosqlite and the raw async drivers;
8. process memory with few and many sessions, and bytes on disk per session.

It prints medians, p99, worst latencies and ratios against the targets of issues 3, 9
and 10, or one JSON object with ``--json``. PostgreSQL, PgBouncer and Redis are skipped,
saying why, when they do not answer or are not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sauce_sql.backends.sqlite.dialect import datetime_to_sqlite
from sauce_sql.backends.sqlite.executor import SQLiteExecutor
from sauce_sql.bench import aio, server_load
from sauce_sql.bench import workloads as work
from sauce_sql.bench.clients import (
    OPERATIONS,
    RawPostgres,
    RawSQLite,
    RedisClient,
    store_ops,
    store_table_names,
)
from sauce_sql.bench.pgbouncer import pgbouncer_binary, running_pgbouncer
from sauce_sql.bench.report import evaluate, format_report
from sauce_sql.redact import safe_url, scrub
from sauce_sql.store import Store

__all__ = ["PARTS", "BenchOptions", "main", "run"]

MAX_AGE = 3600.0
#: The pause (s) after each write of the paced processes: writers of one file that each
#: write now and then, not flat out.
PACE = 0.001
#: What ``--only`` picks from, in the order they run.
PARTS = ("sqlite", "postgresql", "lean-expiry", "pgbouncer", "asyncio", "memory")
_SERVER_PARTS = ("postgresql", "lean-expiry", "pgbouncer")


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how much of it."""

    directory: str | None = None
    pg_url: str | None = None
    redis_url: str | None = None
    sessions: int = 10_000
    rounds: int = 20
    per_round: int = 500
    seconds: float = 3.0
    cleanup_rows: int = 100_000
    cleanup_runs: int = 3
    memory_sessions: tuple[int, ...] = (10_000, 1_000_000)
    hot_sessions: int = 1_000
    hot_increments: int = 20_000
    load_processes: int = 8
    load_threads: int = 8
    pool_size: int = 20
    load_seconds: float = 5.0
    load_rounds: int = 3
    parts: tuple[str, ...] = PARTS

    @classmethod
    def quick(cls, **overrides: Any) -> BenchOptions:
        """Small sizes: a minute rather than several."""
        sizes: dict[str, Any] = dict(
            sessions=2_000,
            rounds=6,
            per_round=200,
            seconds=1.0,
            cleanup_rows=20_000,
            memory_sessions=(10_000, 100_000),
            load_seconds=2.0,
            load_rounds=2,
        )
        return cls(**{**sizes, **overrides})


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _single(
    contenders: dict[str, dict[str, Callable[[str], Any]]], ids: list[str], o: BenchOptions
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for op in OPERATIONS:
        runs = {name: ops[op] for name, ops in contenders.items() if op in ops}
        measured = work.interleaved(runs, ids, rounds=o.rounds, per_round=o.per_round)
        figures[op] = {name: lat.to_dict() for name, lat in measured.items()}
    return figures


def _sqlite(directory: Path, o: BenchOptions, redis: RedisClient | None) -> dict[str, Any]:
    path = directory / "bench.db"
    url = f"sqlite:///{path}"
    store = Store(url, table_name="bench_store", clean_interval=None).start()
    full = Store(url, table_name="bench_store", clean_interval=None, durability="full").start()
    Store(url, table_name="bench_raw", clean_interval=None).start().close()
    ids = work.new_ids(o.sessions)
    for table in ("bench_store", "bench_raw"):
        with _sqlite_connection(path) as connection:
            work.insert_rows(connection, table, ids, expired=False, paramstyle="qmark")
    raw = RawSQLite(str(path), "bench_raw", max_age=MAX_AGE, synchronous="NORMAL")
    result: dict[str, Any] = {}
    try:
        _log("sqlite: single client, store and raw sqlite3 interleaved")
        contenders = {"store": store_ops(store), "raw": raw.ops()}
        if redis is not None:
            redis.populate(ids)
            contenders["redis"] = {"inc_sequence": redis.inc_sequence}
        result["single"] = _single(contenders, ids, o)

        _log("sqlite: 4 threads, and one raw client for comparison")
        result["threads"] = _threads(store, path, ids, o, synchronous="NORMAL")
        _log("sqlite: durability=full")
        full_raw = RawSQLite(str(path), "bench_raw", max_age=MAX_AGE, synchronous="FULL")
        inc = {"store": store_ops(full)["inc_sequence"], "raw": full_raw.ops()["inc_sequence"]}
        single = work.interleaved(inc, ids, rounds=o.rounds // 2 or 1, per_round=o.per_round // 2)
        result["full"] = {name: lat.to_dict() for name, lat in single.items()}
        result["full"]["threads"] = _threads(full, path, ids, o, synchronous="FULL")
        full_raw.close()

        _log("sqlite: 4 processes")
        result["processes"] = {
            kind: work.process_writers(kind, url, table, ids[:200], processes=4, seconds=o.seconds)
            for kind, table in (("store", "bench_store"), ("raw", "bench_raw"))
        }
        # One write every PACE each: what a turn kept for nothing would cost them.
        _log("sqlite: 4 processes, a write every 1 ms each")
        result["processes_paced"] = {
            kind: work.process_writers(
                kind, url, table, ids[:200], processes=4, seconds=o.seconds, pace=PACE
            )
            for kind, table in (("store", "bench_store"), ("raw", "bench_raw"))
        }
        _log(f"sqlite: cleanup of {o.cleanup_rows} expired rows under a writer")
        # Deletion against one DELETE, as issue 3 measured it; what archiving adds
        # (the default, keep_history) is `--history`'s to measure.
        with Store(url, table_name="bench_store", clean_interval=None, keep_history=False) as plain:
            result["cleanup"] = _sqlite_cleanup(path, plain, raw, ids, o)
    finally:
        raw.close()
        full.close()
        store.close()
        if redis is not None:
            redis.clear(ids)
    return result


@contextlib.contextmanager
def _sqlite_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection for bulk inserts: one transaction, committed and closed."""
    connection = sqlite3.connect(path)
    try:
        with connection:
            yield connection
    finally:
        connection.close()


def _threads(
    store: Store, path: Path, ids: list[str], o: BenchOptions, synchronous: str
) -> dict[str, Any]:
    def store_op() -> Callable[[str], Any]:
        return lambda sid: store.inc_sequence(sid, "view")

    raws: list[RawSQLite] = []

    def raw_op() -> Callable[[str], Any]:
        raw = RawSQLite(str(path), "bench_raw", max_age=MAX_AGE, synchronous=synchronous)
        raws.append(raw)
        return raw.ops()["inc_sequence"]

    # The write queue's counters tell how many writes each shared commit carried
    # (durability="full"), the floor's how often it passed between threads ("normal").
    executor = store._executor  # noqa: SLF001
    assert isinstance(executor, SQLiteExecutor)
    queue, floor = executor.group_commit, executor.floor
    before = (queue.groups, queue.grouped_writes, floor.handoffs)
    contenders = {"store_4": (store_op, 4), "raw_1": (raw_op, 1), "raw_4": (raw_op, 4)}
    measured = work.interleaved_threads(contenders, ids, seconds=o.seconds)
    figures: dict[str, Any] = {name: lat.to_dict() for name, lat in measured.items()}
    groups = queue.groups - before[0]
    figures["mean_group"] = (queue.grouped_writes - before[1]) / groups if groups else 1.0
    handoffs = floor.handoffs - before[2]
    figures["writes_per_turn"] = measured["store_4"].calls / handoffs if handoffs else 0.0
    for raw in raws:
        raw.close()
    return figures


def _sqlite_cleanup(
    path: Path, store: Store, raw: RawSQLite, ids: list[str], o: BenchOptions
) -> dict[str, Any]:
    def prepare() -> None:
        for table in ("bench_store", "bench_raw"):
            with _sqlite_connection(path) as connection:
                rows = work.new_ids(o.cleanup_rows)
                work.insert_rows(connection, table, rows, expired=True, paramstyle="qmark")

    def one_delete() -> int:
        now = datetime_to_sqlite(datetime.now(timezone.utc))
        sql = "DELETE FROM bench_raw WHERE expires_at <= ?"
        deleted: int = raw.cursor.execute(sql, (now,)).rowcount
        return deleted

    raw_writer = RawSQLite(str(path), "bench_raw", max_age=MAX_AGE, synchronous="NORMAL")
    contenders = {
        "store": (store.cleanup, store_ops(store)["inc_sequence"]),
        "raw_one_delete": (one_delete, raw_writer.ops()["inc_sequence"]),
    }
    try:
        return work.cleanup_runs(contenders, prepare, ids, runs=o.cleanup_runs)
    finally:
        raw_writer.close()


def _postgres(url: str, o: BenchOptions) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    store_table, raw_table = f"bench_store_{suffix}", f"bench_raw_{suffix}"
    store = Store(url, table_name=store_table, clean_interval=None).start()
    Store(url, table_name=raw_table, clean_interval=None).start().close()
    raw = RawPostgres(url, raw_table, max_age=MAX_AGE)
    result: dict[str, Any] = {}
    try:
        ids = work.new_ids(o.sessions)
        for table in (store_table, raw_table):
            work.insert_rows(raw.connection, table, ids, expired=False, paramstyle="format")
        # Measured on the fresh table: later updates and deletes leave dead row
        # versions until autovacuum comes by.
        size = raw.cursor.execute(f"SELECT pg_total_relation_size('{raw_table}')").fetchone()
        assert size is not None
        result["bytes_per_session"] = size[0] / len(ids)
        _log("postgresql: single client, store and raw psycopg interleaved")
        # On the store's own server session: on a machine with few cores, where the
        # scheduler puts a session's server process matters more than the client (a
        # read took 25 us with it beside the client, 60-70 us across, and a session
        # keeps its place for seconds), so separate sessions would compare places.
        store.lookup_session(ids[0])
        executor = store._executor  # noqa: SLF001
        assert executor is not None
        (held,) = executor.held
        beside = RawPostgres(url, raw_table, max_age=MAX_AGE, connection=held.connection)
        try:
            result["single"] = _single({"store": store_ops(store), "raw": beside.ops()}, ids, o)
        finally:
            beside.close()
        _log(f"postgresql: cleanup of {o.cleanup_rows} expired rows under a writer")

        def prepare() -> None:
            for table in (store_table, raw_table):
                rows = work.new_ids(o.cleanup_rows)
                work.insert_rows(raw.connection, table, rows, expired=True, paramstyle="format")

        def one_delete() -> int:
            return raw.cursor.execute(f"DELETE FROM {raw_table} WHERE expires_at <= now()").rowcount

        writer = RawPostgres(url, raw_table, max_age=MAX_AGE)
        # Deletion, as for SQLite above.
        plain = Store(url, table_name=store_table, clean_interval=None, keep_history=False)
        try:
            plain.start()
            contenders = {
                "store": (plain.cleanup, store_ops(plain)["inc_sequence"]),
                "raw_one_delete": (one_delete, writer.ops()["inc_sequence"]),
            }
            result["cleanup"] = work.cleanup_runs(contenders, prepare, ids, runs=o.cleanup_runs)
        finally:
            plain.close()
            writer.close()
    finally:
        for table in (store_table, raw_table):
            for name in store_table_names(table):
                raw.cursor.execute(f"DROP TABLE IF EXISTS {name}")
        raw.close()
        store.close()
    return result


def _redis(url: str | None) -> tuple[RedisClient | None, str | None]:
    if not url:
        return None, "no --redis-url"
    try:
        return RedisClient(url, f"bench:{uuid.uuid4().hex[:8]}:", max_age=MAX_AGE), None
    except ImportError:
        return None, "redis-py is not installed (pip install redis)"
    except Exception as exc:
        return None, f"no Redis answers at {safe_url(url)}: {_brief(exc)}"


def _pg_reachable(url: str | None) -> str | None:
    if not url:
        return "no --pg-url"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install sauce-sql[postgres])"
    try:
        RawPostgres(url, "unused", max_age=MAX_AGE).close()
    except Exception as exc:
        return f"no PostgreSQL answers at {safe_url(url)}: {_brief(exc)}"
    return None


def _brief(exc: BaseException) -> str:
    return scrub(" ".join(str(exc).split()))[:120]


def run(options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark; returns every figure, the skipped parts and the targets."""
    shown = {**options.__dict__}
    for name in ("pg_url", "redis_url"):
        if shown[name]:
            shown[name] = safe_url(shown[name])
    results: dict[str, Any] = {"options": shown, "skipped": {}}
    parts = options.parts
    with tempfile.TemporaryDirectory(prefix="sauce-sql-bench-", dir=options.directory) as tmp:
        if "sqlite" in parts:
            redis, why = _redis(options.redis_url)
            if why:
                results["skipped"]["redis"] = why
            try:
                results["sqlite"] = _sqlite(Path(tmp), options, redis)
            finally:
                if redis is not None:
                    redis.close()
        if any(part in parts for part in _SERVER_PARTS):
            _server_parts(options, results)
        if "asyncio" in parts:
            _log("asyncio: AsyncStore beside Store, aiosqlite and the raw async drivers")
            rounds, per_round = options.rounds, options.per_round
            results["asyncio"] = {
                "sqlite": aio.asyncio_sqlite(Path(tmp), options.sessions, rounds, per_round)
            }
            if options.pg_url and _pg_reachable(options.pg_url) is None:
                # The 64 tasks' turns: a third of a concurrent run each, the
                # store and two pools taking turns.
                results["asyncio"]["postgresql"] = aio.asyncio_postgres(
                    options.pg_url, options.sessions, rounds, per_round, options.seconds / 3
                )
        if "memory" in parts:
            results["memory"] = []
            for count in options.memory_sessions:
                _log(f"memory: {count} sessions")
                results["memory"].append(work.memory_probe(tmp, count, 20_000))
    results["targets"] = [t.to_dict() for t in evaluate(results)]
    return results


def _server_parts(o: BenchOptions, results: dict[str, Any]) -> None:
    """The PostgreSQL parts asked for, each skipped saying why when it cannot run."""
    asked = [part for part in _SERVER_PARTS if part in o.parts]
    why = _pg_reachable(o.pg_url)
    if why:
        results["skipped"].update(dict.fromkeys(asked, why))
        return
    url = o.pg_url
    assert url is not None
    if "postgresql" in asked:
        results["postgresql"] = _postgres(url, o)
    if "lean-expiry" in asked:
        _log(f"postgresql: {o.hot_increments} increments over {o.hot_sessions} sessions")
        results["lean_expiry"] = server_load.lean_expiry(
            url, sessions=o.hot_sessions, increments=o.hot_increments
        )
    if "pgbouncer" in asked:
        if pgbouncer_binary() is None:
            results["skipped"]["pgbouncer"] = (
                "PgBouncer is not installed (Debian: apt-get install pgbouncer)"
            )
            return
        _log(
            f"postgresql: {o.load_processes} processes x {o.load_threads} threads, direct and"
            f" through PgBouncer (transaction pooling, pool {o.pool_size})"
        )
        results["pgbouncer"] = server_load.pooled_throughput(
            url,
            lambda: running_pgbouncer(url, mode="transaction", pool_size=o.pool_size),
            processes=o.load_processes,
            threads=o.load_threads,
            seconds=o.load_seconds,
            rounds=o.load_rounds,
        )


def main(args: argparse.Namespace) -> int:
    """Run from parsed command-line arguments; print the table or JSON."""
    if getattr(args, "web", False):
        from sauce_sql.bench.web import format_web, run_web

        sizes = {"rounds": 4, "per_round": 200} if args.quick else {}
        for name in ("rounds", "per_round"):
            if getattr(args, name) is not None:
                sizes[name] = getattr(args, name)
        figures = run_web(args.dir, **sizes)
        print(json.dumps(figures, indent=2) if args.json else format_web(figures))
        return 0
    from sauce_sql.cli import BENCH_SIZES

    overrides: dict[str, Any] = {
        "directory": args.dir,
        "pg_url": args.pg_url or None,
        "redis_url": args.redis_url or None,
    }
    names = [size.replace("-", "_") for size in BENCH_SIZES] + ["seconds", "load_seconds"]
    for name in names:
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.memory_sessions:
        overrides["memory_sessions"] = tuple(int(x) for x in args.memory_sessions.split(","))
    if args.only:
        overrides["parts"] = tuple(part.strip() for part in args.only.split(","))
    options = BenchOptions.quick(**overrides) if args.quick else BenchOptions(**overrides)
    results = run(options)
    print(json.dumps(results, indent=2) if args.json else format_report(results))
    return 0
