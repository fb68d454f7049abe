"""What many app servers do to one PostgreSQL: row versions per increment, and
throughput through PgBouncer.

:func:`lean_expiry` counts how the table and its indexes grow under steady increments
and how many of the updates PostgreSQL made HOT (heap-only: the new row version on the
same page, no new index entries), for the store and for an increment that moves
``expires_at`` every time. :func:`pooled_throughput` runs processes of threads, each
process with its own store, straight at the server and through a PgBouncer in
transaction mode, in alternating rounds, and checks every acknowledged increment
against the stored counters.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sauce_sql.bench.clients import RawPostgres, store_table_names
from sauce_sql.store import Store

__all__ = ["lean_expiry", "pooled_throughput"]

MAX_AGE = 3600.0
#: How long the server may take to publish a closed session's statistics.
STATS_WAIT = 15.0
#: How long the load's processes may take to start (spawning, imports, connecting), or
#: to finish a slice.
BARRIER_WAIT = 180.0


def _scalar(raw: RawPostgres, sql: str, *args: Any) -> Any:
    row = raw.cursor.execute(sql, args).fetchone()
    assert row is not None
    return row[0]


def _updates(raw: RawPostgres, table: str) -> tuple[int, int]:
    """(updates, HOT updates) of ``table`` that the server has published so far."""
    raw.cursor.execute("SELECT pg_stat_clear_snapshot()")
    row = raw.cursor.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = %s::regclass",
        (table,),
    ).fetchone()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def _sizes(raw: RawPostgres, table: str) -> dict[str, int]:
    return {
        "table_bytes": int(_scalar(raw, "SELECT pg_relation_size(%s::regclass)", table)),
        "index_bytes": int(_scalar(raw, "SELECT pg_indexes_size(%s::regclass)", table)),
    }


def _drop(raw: RawPostgres, table: str) -> None:
    for name in store_table_names(table):
        raw.cursor.execute(f"DROP TABLE IF EXISTS {name}")


def lean_expiry(url: str, *, sessions: int, increments: int) -> dict[str, Any]:
    """``sessions`` new sessions, then ``increments`` increments spread over them at
    random (the same sequence for each contender), on a fresh table each: the store,
    and psycopg running an increment that moves ``expires_at`` every time.

    Autovacuum is off on these tables, so the growth is what the updates themselves
    leave behind. A server publishes a session's statistics when it ends, so each
    writer is closed before its counts are read.
    """
    suffix = uuid.uuid4().hex[:8]
    watcher = RawPostgres(url, "unused", max_age=MAX_AGE)
    result: dict[str, Any] = {"sessions": sessions, "increments": increments}
    try:
        for name in ("every_write", "store"):
            table = f"bench_hot_{name}_{suffix}"
            store = Store(
                url,
                table_name=table,
                clean_interval=None,
                session_max_age=MAX_AGE,
                lean_expiry=True,
            )
            try:
                store.start()
                watcher.cursor.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
                ids = [store.new_session().session_id for _ in range(sessions)]
                before = _sizes(watcher, table)
                counted = _updates(watcher, table)
                picks = random.Random(7)
                if name == "store":
                    for _ in range(increments):
                        store.inc_sequence(picks.choice(ids), "view")
                    store.close()
                else:
                    store.close()
                    raw = RawPostgres(url, table, max_age=MAX_AGE)
                    increment = raw.ops()["inc_sequence"]
                    for _ in range(increments):
                        increment(picks.choice(ids))
                    raw.close()
                deadline = time.monotonic() + STATS_WAIT
                updates, hot = _updates(watcher, table)
                while updates - counted[0] < increments and time.monotonic() < deadline:
                    time.sleep(0.1)
                    updates, hot = _updates(watcher, table)
                result[name] = {
                    "updates": updates - counted[0],
                    "hot_updates": hot - counted[1],
                    "before": before,
                    "after": _sizes(watcher, table),
                }
            finally:
                store.close()
                _drop(watcher, table)
    finally:
        watcher.close()
    return result


def _schedule(rounds: int) -> list[str]:
    """Which target each slice runs on: pairs in alternating order."""
    pairs = [
        ("direct", "pgbouncer") if r % 2 == 0 else ("pgbouncer", "direct") for r in range(rounds)
    ]
    return [name for pair in pairs for name in pair]


def _slice(store: Store, ids: list[str], threads: int, seconds: float) -> tuple[int, int, str]:
    """``threads`` threads incrementing at random on ``store`` for ``seconds``:
    (acknowledged, errors, the first error or "")."""
    stop = threading.Event()
    counts = [[0, 0] for _ in range(threads)]
    first_error: list[str] = []

    def work(index: int) -> None:
        picks = random.Random(os.getpid() * 7919 + index)
        mine = counts[index]
        while not stop.is_set():
            try:
                store.inc_sequence(picks.choice(ids), "view")
            except Exception as exc:
                mine[1] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            mine[0] += 1

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(c[0] for c in counts), sum(c[1] for c in counts), "".join(first_error[:1])


def _load_worker(
    urls: dict[str, str],
    table: str,
    ids: list[str],
    o: dict[str, Any],
    barrier: Any,
    results: Any,
) -> None:
    """One app server with a store on each target. For each slice of the schedule it
    waits for every process, increments on that slice's target and puts (acknowledged,
    errors, first error) on ``results``."""
    stores = {
        name: Store(url, table_name=table, clean_interval=None).start()
        for name, url in urls.items()
    }
    try:
        for store in stores.values():
            # Each store opens its connections before any slice is timed.
            _slice(store, ids, o["threads"], 0.2)
        barrier.wait(timeout=BARRIER_WAIT)  # every process is started and connected
        for name in _schedule(o["rounds"]):
            barrier.wait(timeout=BARRIER_WAIT)
            results.put(_slice(stores[name], ids, o["threads"], o["seconds"]))
    finally:
        for store in stores.values():
            store.close()


def _counted(raw: RawPostgres, table: str) -> int:
    return int(_scalar(raw, f"SELECT coalesce(sum(view_sequence), 0) FROM {table}"))


def _next(results: Any, processes: list[Any]) -> Any:
    """The next message of a worker; raises if a worker has ended without one."""
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            ended = [p.exitcode for p in processes if not p.is_alive()]
            if ended:
                raise RuntimeError(f"a load process ended early (exit code {ended[0]})") from None


def pooled_throughput(
    url: str,
    pooled_url: Callable[[], Any],
    *,
    processes: int,
    threads: int,
    seconds: float,
    rounds: int,
    sessions: int = 1000,
) -> dict[str, Any]:
    """``processes`` x ``threads`` incrementing straight at ``url`` and through the
    pooler (``pooled_url``: a context manager yielding its URL), in ``rounds`` pairs of
    ``seconds``-long slices taken in alternating order on one table.

    Each process keeps a store on each target from start to end, so no slice pays for
    starting processes or connecting, and the noise of a shared machine falls on both
    targets alike. Every slice's acknowledged increments are checked against the
    stored counters (all processes wait between slices). Returns every slice's ops/s
    and counts, and the ratio of median ops/s, pooled over direct.
    """
    table = f"bench_load_{uuid.uuid4().hex[:8]}"
    raw = RawPostgres(url, table, max_age=MAX_AGE)
    options = {"processes": processes, "threads": threads, "seconds": seconds, "rounds": rounds}
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "pgbouncer": []}
    context = multiprocessing.get_context("spawn")
    try:
        with Store(url, table_name=table, clean_interval=None) as store:
            ids = [store.new_session().session_id for _ in range(sessions)]
        with pooled_url() as through:
            urls = {"direct": url, "pgbouncer": through}
            barrier, results = context.Barrier(processes + 1), context.Queue()
            args = (urls, table, ids, options, barrier, results)
            workers = [context.Process(target=_load_worker, args=args) for _ in range(processes)]
            for worker in workers:
                worker.start()
            try:
                barrier.wait(timeout=BARRIER_WAIT)
                for name in _schedule(rounds):
                    # Every process is idle here: between slices the counts stand still.
                    before = _counted(raw, table)
                    barrier.wait(timeout=BARRIER_WAIT)
                    outcomes = [_next(results, workers) for _ in workers]
                    acked = sum(x[0] for x in outcomes)
                    runs[name].append(
                        {
                            "ops_per_s": acked / seconds,
                            "acked": acked,
                            "stored": _counted(raw, table) - before,
                            "errors": sum(x[1] for x in outcomes),
                            "first_error": next((x[2] for x in outcomes if x[2]), None),
                        }
                    )
            finally:
                barrier.abort()
                for worker in workers:
                    worker.join(timeout=30)
                    if worker.is_alive():
                        worker.kill()
    finally:
        _drop(raw, table)
        raw.close()
    medians = {name: statistics.median(r["ops_per_s"] for r in done) for name, done in runs.items()}
    return {
        **options,
        "rounds": runs,
        "median_ops_per_s": medians,
        "ratio": medians["pgbouncer"] / medians["direct"] if medians["direct"] else 0.0,
        "round_ratios": [
            p["ops_per_s"] / d["ops_per_s"] if d["ops_per_s"] else 0.0
            for d, p in zip(runs["direct"], runs["pgbouncer"], strict=True)
        ],
    }
