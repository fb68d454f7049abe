"""``sauce-sql bench --history``: what history costs, on a SQLite file and PostgreSQL.

- Archiving cleanup of N expired sessions against plain deletion (``keep_history=False``)
  by the same store code, round by round in alternating order, while a writer thread
  increments live sessions: total time, and the writer's worst wait during each.
- The floor under that ratio: the same backlog moved and deleted by raw SQL in fixed
  batches, no store code, with history's indexes, without its session_id index, and
  into a bare table with no index at all.
- The report over a million archived sessions (SQLite), and ``forget_user`` of a user
  with a thousand sessions among many others.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sauce_sql.backends.sqlite.dialect import datetime_to_sqlite
from sauce_sql.bench import workloads as work
from sauce_sql.bench.clients import store_table_names
from sauce_sql.report import build_report
from sauce_sql.schema import history_table
from sauce_sql.store import Store

__all__ = ["run_history"]

LIVE = 2000
#: The sessions table's columns, in order, for the bench's raw SQL.
_COLUMNS = (
    "session_id, user_agent, client_ip, user_id, view_sequence, event_sequence, "
    "created_at, last_modified, expires_at"
)


@contextmanager
def _tables(url: str, *names: str) -> Iterator[None]:
    try:
        yield
    finally:
        if url.startswith("postgresql"):
            engine = sa.create_engine(url)
            with engine.begin() as connection:
                for name in names:
                    for table in store_table_names(name):
                        connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
            engine.dispose()


def _fill_expired(store: Store, rows: int) -> None:
    """``rows`` sessions that expired over the last hour, one in four of them
    identified, as a real backlog is: each of them its own expiry time (history's key
    then grows at its end, as it does in use) and only identified ones in the partial
    user_id indexes."""
    table = store.get_state().table_name
    sqlite = store.engine.dialect.name == "sqlite"
    now = datetime.now(timezone.utc)
    marks = ", ".join(["?" if sqlite else "%s"] * 9)
    batch = []
    for n, sid in enumerate(work.new_ids(rows)):
        expires = now - timedelta(hours=1) + timedelta(seconds=3600 * n / rows)
        created = expires - timedelta(hours=1)
        times: tuple[Any, ...] = (created, created, expires)
        if sqlite:
            times = tuple(datetime_to_sqlite(t) for t in times)
        user = f"u{n % 5000}" if n % 4 == 0 else None
        batch.append((sid, "bench", f"203.0.{n % 250}.{n % 199}", user, n % 7, n % 3, *times))
    with store.engine.connect() as connection:
        raw: Any = connection.connection.dbapi_connection
        cursor = raw.cursor()
        cursor.executemany(f"INSERT INTO {table} ({_COLUMNS}) VALUES ({marks})", batch)
        cursor.close()
        raw.commit()


def _archive_vs_delete(url: str, rows: int, runs: int) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    names = {"archive": f"bench_arch_{suffix}", "delete": f"bench_del_{suffix}"}
    results: dict[str, list[dict[str, Any]]] = {"archive": [], "delete": []}
    with _tables(url, *names.values()):
        stores = {
            kind: Store(
                url, table_name=name, clean_interval=None, keep_history=kind == "archive"
            ).start()
            for kind, name in names.items()
        }
        try:
            ids = {}
            for kind, store in stores.items():
                ids[kind] = [store.new_session().session_id for _ in range(LIVE)]
            for run in range(runs):
                order = ["archive", "delete"] if run % 2 == 0 else ["delete", "archive"]
                for kind in order:
                    store = stores[kind]
                    _fill_expired(store, rows)

                    def increment(sid: str, store: Store = store) -> int:
                        return store.inc_sequence(sid, "view")

                    outcome = work.cleanup_under_load(store.cleanup, increment, ids[kind])
                    assert outcome["deleted"] == rows, outcome["deleted"]
                    results[kind].append(outcome)
        finally:
            for store in stores.values():
                store.close()
    summary: dict[str, Any] = {}
    for kind, outcomes in results.items():
        summary[kind] = {
            "total_ms": statistics.median(o["total_ms"] for o in outcomes),
            "totals_ms": [round(o["total_ms"], 1) for o in outcomes],
            "worst_wait_ms": max(o["writer"]["worst_us"] / 1000 for o in outcomes),
            "writer_alone_worst_ms": max(o["writer_alone"]["worst_us"] / 1000 for o in outcomes),
        }
    summary["ratio"] = summary["archive"]["total_ms"] / summary["delete"]["total_ms"]
    return summary


#: The raw floor's contenders, each a fresh copy of the same tables and backlog: one
#: plain delete, and three moves whose targets differ only in their indexes.
FLOOR_VARIANTS = ("delete", "move", "move_no_session_index", "move_bare")
#: Rows per batch of the raw floor (fixed, unlike the store's timed batches).
FLOOR_BATCH = 1000
#: Rows already in history when the floor's moves begin (as in the store's second round).
FLOOR_HISTORY = 100_000


def _floor_sqlite_batch(
    connection: sa.Connection, variant: str, live: str, history: str, now: Any
) -> tuple[int, bool]:
    """One batch on SQLite, as the store's: the batch's last (expires_at, session_id)
    first, then the range up to it (the rest, when fewer are left); how many rows went,
    and whether they were the last."""
    found = connection.execute(
        sa.text(
            f"SELECT expires_at, session_id FROM {live} WHERE expires_at <= :now "
            "ORDER BY expires_at, session_id LIMIT 1 OFFSET :skip"
        ),
        {"now": now, "skip": FLOOR_BATCH - 1},
    ).first()
    values: dict[str, Any]
    if found is None:
        where, values = "expires_at <= :now", {"now": now}
    else:
        where = "(expires_at < :at OR (expires_at = :at AND session_id <= :sid))"
        values = {"at": found[0], "sid": found[1]}
    if variant != "delete":
        connection.execute(
            sa.text(
                f"INSERT INTO {history} ({_COLUMNS}) SELECT {_COLUMNS} FROM {live} WHERE {where}"
            ),
            values,
        )
    deleted = connection.execute(sa.text(f"DELETE FROM {live} WHERE {where}"), values)
    return deleted.rowcount, found is None


def _floor_server_batch(
    connection: sa.Connection, variant: str, live: str, history: str, now: Any
) -> tuple[int, bool]:
    """One batch on PostgreSQL, as the store's: FLOOR_BATCH expired rows by physical
    address, deleted, or moved in one statement; how many, and whether the last."""
    expired = "expires_at <= :now"
    delete = (
        f"DELETE FROM {live} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {live} WHERE {expired} "
        f"LIMIT {FLOOR_BATCH})) AND {expired}"
    )
    if variant == "delete":
        statement = delete
    else:
        statement = (
            f"WITH moved AS ({delete} RETURNING {_COLUMNS}) "
            f"INSERT INTO {history} ({_COLUMNS}) SELECT {_COLUMNS} FROM moved"
        )
    count = connection.execute(sa.text(statement), {"now": now}).rowcount
    return count, count < FLOOR_BATCH


def _floor_once(url: str, variant: str, rows: int, history_rows: int) -> float:
    """Milliseconds that raw SQL takes to delete (or move to history) ``rows`` expired
    sessions in batches of FLOOR_BATCH, each batch one transaction."""
    name = f"bench_floor_{uuid.uuid4().hex[:8]}"
    live, history = f'"{name}"', f'"{name}_history"'
    with _tables(url, name):
        with Store(url, table_name=name, clean_interval=None) as store:
            _fill_history(store, history_rows)
            _fill_expired(store, rows)
        engine = sa.create_engine(url)
        sqlite = engine.dialect.name == "sqlite"
        try:
            with engine.begin() as connection:
                if variant == "move_no_session_index":
                    connection.exec_driver_sql(f'DROP INDEX "ix_{name}_history_session_id"')
                if variant == "move_bare":
                    # No key and no index: a target that could serve neither revival
                    # nor erasure, only the cheapest move there is.
                    connection.exec_driver_sql(
                        f'CREATE TABLE "{name}_bare" AS SELECT * FROM {history}'
                    )
                    history = f'"{name}_bare"'
            with engine.connect() as connection:
                # Every variant starts with no page of its tables in the log: none pays
                # for another's full-page images (PostgreSQL) or log pages (SQLite).
                connection.exec_driver_sql(
                    "PRAGMA wal_checkpoint(TRUNCATE)" if sqlite else "CHECKPOINT"
                )
            now: Any = datetime.now(timezone.utc)
            if sqlite:
                now = datetime_to_sqlite(now)
            moved = 0
            began = time.perf_counter()
            batch = _floor_sqlite_batch if sqlite else _floor_server_batch
            while True:
                with engine.begin() as connection:
                    rows_now, last = batch(connection, variant, live, history, now)
                moved += rows_now
                if last:
                    break
            took = (time.perf_counter() - began) * 1000
        finally:
            if not sqlite:  # a SQLite file goes whole, with its tables
                with engine.begin() as connection:
                    connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}_bare"')
            engine.dispose()
    assert moved == rows, (variant, moved)
    return took


def _raw_floor(url: str | Path, rows: int, runs: int, history_rows: int) -> dict[str, Any]:
    """Each floor variant's median total over ``runs`` rounds (in alternating order),
    and its ratio to the plain delete's. ``url`` is PostgreSQL's, or a folder for a
    SQLite file per round (each removed after it)."""
    totals: dict[str, list[float]] = {variant: [] for variant in FLOOR_VARIANTS}
    for run in range(runs):
        order = FLOOR_VARIANTS if run % 2 == 0 else FLOOR_VARIANTS[::-1]
        for variant in order:
            if isinstance(url, Path):
                path = url / f"floor-{run}-{variant}.db"
                took = _floor_once(f"sqlite:///{path}", variant, rows, history_rows)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            else:
                took = _floor_once(url, variant, rows, history_rows)
            totals[variant].append(took)
    base = statistics.median(totals["delete"])
    return {
        "batch_rows": FLOOR_BATCH,
        "history_rows": history_rows,
        **{
            variant: {
                "total_ms": statistics.median(found),
                "totals_ms": [round(t, 1) for t in found],
                "ratio": statistics.median(found) / base,
            }
            for variant, found in totals.items()
        },
    }


#: About 100 distinct user agents, as a real history holds (browsers x versions, tools).
AGENTS = [
    *(
        f"Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0"
        for v in range(100, 140)
    ),
    *(
        f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{v}.0.0.0 Safari/537.36"
        for v in range(100, 140)
    ),
    *(
        f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 "
        f"(KHTML, like Gecko) Version/17.{v} Mobile/15E148 Safari/604.1"
        for v in range(20)
    ),
    "curl/8.5.0",
    "",
]
HISTORY_SPAN = 34_560_000  # 400 days, the default history_max_age


def _fill_history(store: Store, rows: int, *, user: str | None = None) -> None:
    """``rows`` archived sessions spread evenly over the last 400 days (each its own
    start time), written straight to history."""
    history = history_table(store.get_state().table_name)
    now = datetime.now(timezone.utc)
    with store.engine.begin() as connection:
        for start in range(0, rows, 50_000):
            batch = []
            for n in range(start, min(rows, start + 50_000)):
                created = now - timedelta(seconds=HISTORY_SPAN * n / rows)
                batch.append(
                    {
                        "session_id": uuid.uuid4().hex,
                        "user_agent": AGENTS[n * 7919 % len(AGENTS)],
                        "client_ip": None,
                        "user_id": user
                        if user is not None
                        else (f"u{n % 5000}" if n % 4 else None),
                        "view_sequence": n % 7,
                        "event_sequence": n % 3,
                        "created_at": created,
                        "last_modified": created,
                        "expires_at": created + timedelta(hours=1, microseconds=n),
                    }
                )
            connection.execute(history.insert(), batch)


def _report_figures(store: Store, now: datetime) -> tuple[dict[str, Any], list[float]]:
    """The default report at ``now`` (without its user agents, which the aggregates do
    not keep), and the seconds each of three readings took."""
    timings = []
    for _ in range(3):
        began = time.perf_counter()
        report = build_report(store.engine, "sessions", now)
        timings.append(time.perf_counter() - began)
    figures = report.to_dict()
    del figures["top_user_agents"]
    return figures, timings


def _report_over_history(directory: Path, rows: int) -> dict[str, Any]:
    """The report over ``rows`` archived sessions; then over the aggregates retention
    folded all of them into (which must give the same figures)."""
    url = f"sqlite:///{directory / 'history.db'}"
    now = datetime.now(timezone.utc)
    with Store(url, clean_interval=None, history_max_age=1) as store:
        _fill_history(store, rows)
        archived, timings = _report_figures(store, now)
        began = time.perf_counter()
        store.cleanup(now + timedelta(days=1))
        retire = time.perf_counter() - began
        folded, folded_timings = _report_figures(store, now)
    return {
        "history_rows": rows,
        "sessions_counted": archived["total_sessions"],
        "seconds": statistics.median(timings),
        "all_s": [round(t, 3) for t in timings],
        "retire_s": round(retire, 2),
        "aggregates_seconds": statistics.median(folded_timings),
        "aggregates_all_s": [round(t, 3) for t in folded_timings],
        "same_figures": folded == archived,
    }


def _forget(url: str, others: int, sessions: int) -> dict[str, Any]:
    name = f"bench_forget_{uuid.uuid4().hex[:8]}"
    with _tables(url, name), Store(url, table_name=name, clean_interval=None) as store:
        _fill_history(store, others)
        timings = []
        for n in range(5):
            user = f"forgotten-{n}"
            _fill_history(store, sessions - 100, user=user)
            for _ in range(100):
                store.new_session(user_id=user)
            began = time.perf_counter()
            gone = store.forget_user(user)
            timings.append(time.perf_counter() - began)
            assert gone == sessions, gone
    return {
        "sessions_of_user": sessions,
        "other_rows": others,
        "median_ms": statistics.median(timings) * 1000,
        "worst_ms": max(timings) * 1000,
    }


def run_history(
    pg_url: str | None,
    *,
    rows: int = 100_000,
    runs: int = 3,
    history_rows: int = 1_000_000,
    floor_history: int = FLOOR_HISTORY,
    directory: str | None = None,
) -> dict[str, Any]:
    """Every history figure; PostgreSQL's skipped when ``pg_url`` is None."""
    with tempfile.TemporaryDirectory(dir=directory) as folder:
        path = Path(folder)
        results: dict[str, Any] = {
            "sqlite_archive": _archive_vs_delete(f"sqlite:///{path / 'a.db'}", rows, runs),
            "sqlite_floor": _raw_floor(path, rows, runs, floor_history),
            "sqlite_report": _report_over_history(path, history_rows),
            "sqlite_forget": _forget(f"sqlite:///{path / 'f.db'}", 100_000, 1000),
        }
    if pg_url is not None:
        results["postgresql_archive"] = _archive_vs_delete(pg_url, rows, runs)
        results["postgresql_floor"] = _raw_floor(pg_url, rows, runs, floor_history)
        results["postgresql_forget"] = _forget(pg_url, 100_000, 1000)
    return results


def format_history(results: dict[str, Any]) -> str:
    """The figures as text, each beside its target."""
    lines = ["History (archiving cleanup, report, erasure)"]
    for backend, bound in (("sqlite", 50), ("postgresql", 10)):
        archive = results.get(f"{backend}_archive")
        if archive is None:
            continue
        a, d = archive["archive"], archive["delete"]
        lines += [
            f"  {backend}: archiving cleanup {a['total_ms']:.0f} ms vs plain deletion "
            f"{d['total_ms']:.0f} ms: {archive['ratio']:.2f}x (target <= 1.5x); "
            f"runs {a['totals_ms']} vs {d['totals_ms']}",
            f"    writer's worst wait during archiving {a['worst_wait_ms']:.1f} ms, during "
            f"deletion {d['worst_wait_ms']:.1f} ms (target <= {bound} ms); alone before "
            f"{a['writer_alone_worst_ms']:.1f} ms",
        ]
        floor = results[f"{backend}_floor"]
        lines.append(
            f"    raw SQL, batches of {floor['batch_rows']}, {floor['history_rows']} rows "
            f"in history: plain delete {floor['delete']['total_ms']:.0f} ms; moves "
            + ", ".join(
                f"{label} {floor[variant]['ratio']:.2f}x"
                for variant, label in (
                    ("move", "with history's indexes"),
                    ("move_no_session_index", "without its session_id index"),
                    ("move_bare", "into a table with no index"),
                )
            )
        )
        forget = results[f"{backend}_forget"]
        lines.append(
            f"  {backend}: forget_user of {forget['sessions_of_user']} sessions among "
            f"{forget['other_rows']} others: median {forget['median_ms']:.1f} ms, worst "
            f"{forget['worst_ms']:.1f} ms (target <= 50 ms)"
        )
    report = results["sqlite_report"]
    lines.append(
        f"  sqlite: report over {report['history_rows']} archived sessions: "
        f"{report['seconds']:.2f} s (target <= 1 s); runs {report['all_s']}"
    )
    lines.append(
        f"    retention folded them all in {report['retire_s']:.1f} s; the report over the"
        f" aggregates: {report['aggregates_seconds']:.2f} s, runs {report['aggregates_all_s']},"
        f" same figures: {report['same_figures']}"
    )
    return "\n".join(lines)
