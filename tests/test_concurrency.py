"""Exact results under real concurrency: 4 processes x 4 threads on one table.

Every acknowledged increment must be stored, and each value handed out exactly once;
racing creations and revivals of one id must end with one live row, raising
SessionExists only from new_session, and only when another caller got there first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from _support import SPAWN, run_children
from conftest import Backend, FakeClock

from sauce_sql import ReviveSession, SessionExists, Store

PROCESSES = 4
THREADS = 4
HOT_SESSIONS = ["hot-a", "hot-b", "hot-c"]
INCREMENTS_PER_THREAD = {"sqlite": 250, "postgresql": 150}
RACE_ROUNDS = 15
TIMEOUT = 120

pytestmark = pytest.mark.slow


def _run_children(target: Any, args_for: Any) -> list[Any]:
    """Run PROCESSES children of ``target`` and collect one result from each."""
    return run_children(target, [tuple(args_for(p)) for p in range(PROCESSES)], TIMEOUT)


def _in_threads(function: Any) -> None:
    """Run ``function(t)`` for t in range(THREADS) on threads and wait for all."""
    import threading

    threads = [threading.Thread(target=function, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def increment_worker(
    url: str, table: str, per_thread: int, barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a child process
    """Child: THREADS threads increment the hot sessions; report every returned value."""
    acked: list[tuple[str, str, int]] = []
    errors: list[str] = []
    with Store(url, table_name=table, clean_interval=None) as store:

        def run(t: int) -> None:
            barrier.wait(TIMEOUT)
            for i in range(per_thread):
                sid = HOT_SESSIONS[(t + i) % len(HOT_SESSIONS)]
                kind = "view" if (i // len(HOT_SESSIONS)) % 2 == 0 else "event"
                try:
                    value = store.inc_sequence(sid, kind)
                except Exception as exc:
                    errors.append(repr(exc))
                else:
                    acked.append((sid, kind, value))

        _in_threads(run)
    results.put({"acked": acked, "errors": errors})


def test_hot_increments_are_exact(shared_backend: Backend) -> None:
    """Every increment acknowledged by 4x4 concurrent clients is stored, each value once."""
    backend = shared_backend
    with Store(backend.url, table_name=backend.table_name, clean_interval=None) as store:
        for sid in HOT_SESSIONS:
            store.new_session(sid)
    per_thread = INCREMENTS_PER_THREAD[backend.dialect]
    barrier = SPAWN.Barrier(PROCESSES * THREADS)
    reports = _run_children(
        increment_worker, lambda p: (backend.url, backend.table_name, per_thread, barrier)
    )
    errors = [e for report in reports for e in report["errors"]]
    values: dict[tuple[str, str], list[int]] = defaultdict(list)
    for report in reports:
        for sid, kind, value in report["acked"]:
            values[sid, kind].append(value)
    with Store(backend.url, table_name=backend.table_name, clean_interval=None) as store:
        stored = {}
        for sid in HOT_SESSIONS:
            session = store.lookup_session(sid)
            assert session is not None
            stored[sid, "view"] = session.view_sequence
            stored[sid, "event"] = session.event_sequence
    acked_total = sum(len(v) for v in values.values())
    print(f"FIGURES {backend.name}: acked={acked_total} stored={sum(stored.values())}")
    assert errors == []
    assert acked_total == PROCESSES * THREADS * per_thread
    for key, count in stored.items():
        # Each value 1..stored handed out exactly once: nothing lost, nothing doubled.
        assert sorted(values[key]) == list(range(1, count + 1)), key


SCENARIOS = {
    "new_only": ["new"],
    "maybe_only": ["maybe"],
    "revive_only": ["revive"],
    "mixed": ["new", "revive", "maybe"],
}


def race_op(scenario: str, process: int, thread: int) -> str:
    """The operation one client runs in a scenario."""
    ops = SCENARIOS[scenario]
    return ops[(process * THREADS + thread) % len(ops)]


def race_worker(
    url: str, table: str, process: int, plan: list[tuple[str, str]], barrier: Any, results: Any
) -> None:  # pragma: no cover - runs in a child process
    """Child: for each (id, scenario) of the plan, its threads are released together on
    the id, each running its operation once."""
    outcomes: list[tuple[str, str, str, Any]] = []
    with Store(url, table_name=table, clean_interval=None) as store:

        def run(t: int) -> None:
            for sid, scenario in plan:
                op = race_op(scenario, process, t)
                revive = ReviveSession(sid, user_agent=op)
                barrier.wait(TIMEOUT)
                try:
                    if op == "new":
                        session = store.new_session(sid, user_agent=op)
                    elif op == "revive":
                        session = store.revive_session(revive)
                    else:
                        session = store.maybe_revive_session(revive)
                except SessionExists:
                    outcomes.append((sid, op, "exists", None))
                except Exception as exc:
                    outcomes.append((sid, op, "error", repr(exc)))
                else:
                    seen = (session.view_sequence, session.created_at.isoformat())
                    outcomes.append((sid, op, "ok", seen))

        _in_threads(run)
    results.put(outcomes)


def test_racing_creations_end_with_one_row(shared_backend: Backend) -> None:
    """16 clients creating or reviving one id at once leave one live row; only
    new_session raises SessionExists, and only for the callers who lost the race."""
    backend = shared_backend
    plan = [
        (f"race-{scenario}-{state}-{n}", scenario)
        for scenario in sorted(SCENARIOS)
        for state in ("fresh", "expired")
        for n in range(RACE_ROUNDS)
    ]
    expired = [sid for sid, _ in plan if "-expired-" in sid]
    # Rows that expired an hour ago, with 5 views each, not yet cleaned up.
    past = FakeClock(datetime.now(timezone.utc) - timedelta(hours=2))
    with Store(
        backend.url, table_name=backend.table_name, clean_interval=None, clock=past
    ) as store:
        for sid in expired:
            store.new_session(sid)
            for _ in range(5):
                store.inc_sequence(sid, "view")
    barrier = SPAWN.Barrier(PROCESSES * THREADS)
    reports = _run_children(
        race_worker, lambda p: (backend.url, backend.table_name, p, plan, barrier)
    )
    by_id: dict[str, list[tuple[str, str, Any]]] = defaultdict(list)
    for outcomes in reports:
        for sid, op, result, detail in outcomes:
            by_id[sid].append((op, result, detail))
    with Store(backend.url, table_name=backend.table_name, clean_interval=None) as store:
        for sid, scenario in plan:
            outcomes = by_id[sid]
            assert len(outcomes) == PROCESSES * THREADS, sid
            assert [o for o in outcomes if o[1] == "error"] == [], sid
            kinds = Counter((op, result) for op, result, _ in outcomes)
            # Revivals never fail; new_session fails only as a loser of the race.
            assert kinds[("revive", "exists")] == kinds[("maybe", "exists")] == 0, sid
            created = kinds[("new", "ok")]
            assert created <= 1, sid
            if scenario == "new_only":
                assert created == 1, sid
            session = store.lookup_session(sid)
            assert session is not None, sid
            # One row: every caller saw the same row, with the counters it keeps.
            expected_views = 5 if sid in expired and created == 0 else 0
            assert session.view_sequence == expected_views, sid
            seen = {detail for _, result, detail in outcomes if result == "ok"}
            assert seen == {(expected_views, session.created_at.isoformat())}, sid


def test_stores_of_many_tables_started_at_once_each_write_their_own(tmp_path: Any) -> None:
    """Stores of more tables than the process keeps compiled statements for, started
    from 8 threads at once on one file: each writes to its own table and reads its own
    row back (the shared statements are per table, and forgetting old ones is safe)."""
    import threading

    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'many.db'}"
    tables = [f"many_{n}" for n in range(80)]
    failures: list[BaseException] = []

    def start_and_write(names: list[str]) -> None:
        try:
            for name in names:
                with Store(url, table_name=name, clean_interval=None) as store:
                    store.new_session(f"sid-{name}")
                    found = store.lookup_session(f"sid-{name}")
                    assert found is not None
                    assert found.session_id == f"sid-{name}"
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=start_and_write, args=(tables[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            for name in tables:
                ids = connection.exec_driver_sql(f"SELECT session_id FROM {name}").all()
                assert ids == [(f"sid-{name}",)]
    finally:
        engine.dispose()
