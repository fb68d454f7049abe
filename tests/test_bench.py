"""``sauce-sql bench`` runs end to end at tiny sizes and measures what it says.

Its figures are not checked here (timings belong to the benchmark, not to tests): only
that every part runs against the real databases and that its bookkeeping holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import PG_URL, REQUIRE_PG, postgres_unavailable, require_postgres

from sauce_sql.bench import BenchOptions, run
from sauce_sql.bench.clients import OPERATIONS
from sauce_sql.bench.pgbouncer import pgbouncer_binary
from sauce_sql.bench.report import format_report


def _bench_tables() -> set[str]:
    """The bench's tables on the test server (each run makes its own, named bench_...)."""
    engine = sa.create_engine(PG_URL)
    try:
        with engine.connect() as connection:
            found = connection.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE starts_with(tablename, 'bench')"
            )
            return {name for (name,) in found}
    finally:
        engine.dispose()


@pytest.mark.slow
def test_bench_client_parts_run_at_tiny_sizes(tmp_path: Path) -> None:
    """The SQLite, PostgreSQL, asyncio and memory parts run; acknowledged increments are
    all stored; cleanups delete every expired row they were given; the report and the JSON
    come out, without the passwords of the URLs it was given."""
    # Passwords the bench must not print (the test server trusts its clients), and a
    # Redis that is not there.
    with_password = sa.make_url(PG_URL).update_query_dict({"password": "SECRET1"})
    pg = None if postgres_unavailable() else with_password.render_as_string(hide_password=False)
    options = BenchOptions(
        directory=str(tmp_path),
        pg_url=pg,
        redis_url="redis://:SECRET2@127.0.0.1:1/0",
        sessions=200,
        rounds=1,
        per_round=20,
        seconds=0.3,
        cleanup_rows=300,
        cleanup_runs=2,
        memory_sessions=(1000, 3000),
        # The server load parts have a test of their own, below.
        parts=("sqlite", "postgresql", "asyncio", "memory"),
    )
    tables_before = set() if pg is None else _bench_tables()
    results = run(options)
    if pg:
        # Its tables went with it: the history and aggregates tables made beside them too.
        assert _bench_tables() == tables_before
    lite = results["sqlite"]
    assert set(lite["single"]) == set(OPERATIONS)
    for kind in ("store", "raw"):
        procs = lite["processes"][kind]
        assert procs["acked"] > 0
        assert procs["acked"] == procs["stored"]
        assert procs["errors"] == 0
    for backend in ("sqlite", "postgresql") if pg else ("sqlite",):
        cleanup = results[backend]["cleanup"]
        for contender in ("store", "raw_one_delete"):
            assert cleanup[contender]["deleted"] == 300
            assert len(cleanup[contender]["totals_ms"]) == 2
    if pg:
        assert set(results["postgresql"]["single"]) == set(OPERATIONS)
    assert [m["sessions"] for m in results["memory"]] == [1000, 3000]
    assert "redis" in results["skipped"]
    assert results["targets"]
    report = format_report(results)
    assert "Targets (issues 3, 9 and 10)" in report
    asyncio = results["asyncio"]
    for backend in ("sqlite", "postgresql") if pg else ("sqlite",):
        contenders = asyncio[backend]["single"]["inc_sequence"]
        assert "async" in contenders
        assert len(contenders) >= 3  # the store and at least two to compare with
        assert f"asyncio, {'SQLite WAL file' if backend == 'sqlite' else 'PostgreSQL'}" in report
    locked = asyncio["sqlite"]["lag_while_locked"]
    assert locked["write_took_ms"] >= 500
    # The write waited half a second or more for the lock, off the loop: no turn of
    # the loop lasted anything like it.
    assert locked["longest_turn_ms"] < 250
    assert "loop held: its longest turn" in report
    if pg:
        # The 64 tasks: the store beside psycopg's pool (the target) and a bare queue.
        tasks = asyncio["postgresql"]["tasks_64"]
        assert {"store", "driver_pool", "queue_pool"} <= set(tasks)
        assert all(tasks[name]["ops_per_s"] > 0 for name in ("store", "driver_pool"))
        assert "psycopg_pool.AsyncConnectionPool of 10" in report
    for secret in ("SECRET1", "SECRET2"):
        assert secret not in json.dumps(results)
        assert secret not in report


def test_web_bench_runs_and_skipped_requests_call_no_store(tmp_path: Path) -> None:
    """The web bench runs at tiny sizes: every figure is there, its skipped requests
    made no store call, and the table names each target."""
    from sauce_sql.bench.web import format_web, run_web

    figures = run_web(str(tmp_path), rounds=1, per_round=20)
    assert set(figures["views"]) == {"warm", "cold_agent", "cold", "new"}
    assert set(figures["asgi"]) == {"warm", "cold_agent", "cold", "new", "bot"}
    assert set(figures["skipped"]) == {"bot", "probe", "static", "prefetch"}
    assert figures["skipped_requests"] == 4 * 2 * 20  # a warm-up round and one measured
    assert figures["skipped_store_calls"] == 0
    assert figures["bot_check"]["patterns"] > 1000
    table = format_web(figures)
    assert "<= 60" in table
    assert "<= 5" in table


@pytest.mark.slow
@pytest.mark.postgresql
def test_bench_server_parts_at_tiny_sizes() -> None:
    """The lean-expiry part counts every increment, none of them HOT when expires_at
    moves each time; the PgBouncer part (skipped, saying so, without PgBouncer) stores
    every increment it acknowledged, direct and pooled, in every slice."""
    require_postgres()
    options = BenchOptions(
        pg_url=PG_URL,
        hot_sessions=50,
        hot_increments=500,
        load_processes=2,
        load_threads=3,
        pool_size=2,
        load_seconds=0.3,
        load_rounds=2,
        parts=("lean-expiry", "pgbouncer"),
    )
    tables_before = _bench_tables()
    results = run(options)
    assert _bench_tables() == tables_before
    lean = results["lean_expiry"]
    for contender in ("every_write", "store"):
        assert lean[contender]["updates"] == 500
    assert lean["every_write"]["hot_updates"] == 0
    assert (
        lean["every_write"]["after"]["index_bytes"] > lean["every_write"]["before"]["index_bytes"]
    )
    if pgbouncer_binary() is None and not REQUIRE_PG:
        assert "PgBouncer is not installed" in results["skipped"]["pgbouncer"]
        return
    pooled = results["pgbouncer"]
    for name in ("direct", "pgbouncer"):
        assert len(pooled["rounds"][name]) == 2
        for slice_ in pooled["rounds"][name]:
            assert slice_["acked"] > 0
            assert (slice_["acked"], slice_["errors"]) == (slice_["stored"], 0)
    assert len(pooled["round_ratios"]) == 2
    assert "through PgBouncer / direct" in format_report(results)


@pytest.mark.slow
def test_history_bench_runs_at_tiny_sizes(tmp_path: Path) -> None:
    """``--history`` runs end to end: every cleanup and every raw floor variant moved or
    deleted the whole backlog (each asserts its count), forget_user took every session
    of its user, retention kept the report's figures, and no table is left behind."""
    from sauce_sql.bench.history import FLOOR_VARIANTS, format_history, run_history

    pg = None if postgres_unavailable() else PG_URL
    tables_before = set() if pg is None else _bench_tables()
    results = run_history(
        pg, rows=300, runs=2, history_rows=2000, floor_history=500, directory=str(tmp_path)
    )
    backends = ("sqlite", "postgresql") if pg else ("sqlite",)
    for backend in backends:
        archive = results[f"{backend}_archive"]
        assert len(archive["archive"]["totals_ms"]) == len(archive["delete"]["totals_ms"]) == 2
        floor = results[f"{backend}_floor"]
        for variant in FLOOR_VARIANTS:
            assert len(floor[variant]["totals_ms"]) == 2
    assert results["sqlite_report"]["same_figures"]
    assert results["sqlite_report"]["sessions_counted"] == 2000
    if pg:
        assert _bench_tables() == tables_before
    # Each round's SQLite file went with it.
    assert not list(tmp_path.rglob("floor-*"))
    text = format_history(results)
    for backend in backends:
        assert f"{backend}: archiving cleanup" in text
    assert "into a table with no index" in text


def test_loop_clock_times_the_turn_a_blocking_call_holds() -> None:
    """The loop's clock sees a coroutine that blocks the loop for 60 ms (a blocking
    call on the loop, as a store must not make) as a turn of at least that long, the
    turn that disarms it included, and nothing while it is not armed."""
    import asyncio
    import time

    from sauce_sql.bench.aio_lag import LoopClock, run_timed

    async def main(clock: LoopClock) -> tuple[float, float, float]:
        time.sleep(0.06)  # not armed: not timed
        await asyncio.sleep(0.002)
        unarmed = clock.longest_ms
        clock.arm()
        await asyncio.sleep(0.002)
        time.sleep(0.06)
        await asyncio.sleep(0.002)
        clock.disarm()
        await asyncio.sleep(0)
        blocked = clock.longest_ms
        clock.arm()
        await asyncio.sleep(0.002)
        time.sleep(0.06)
        clock.disarm()  # in the same turn as the block: still timed as it ends
        await asyncio.sleep(0)
        return unarmed, blocked, clock.longest_ms

    unarmed, blocked, disarmed_in_turn = run_timed(main)
    assert unarmed == 0.0
    assert blocked >= 60.0
    assert disarmed_in_turn >= 60.0
