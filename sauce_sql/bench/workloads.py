"""The workloads of ``sauce-sql bench``: how each figure is measured.

Latencies are taken per call with ``perf_counter_ns``. Contenders run interleaved,
round by round in alternating order, so that the noise of a shared machine falls on
all of them alike; ratios are taken between figures of the same run.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sauce_sql.backends.sqlite.dialect import datetime_to_sqlite
from sauce_sql.bench.clients import Operation

__all__ = [
    "Latencies",
    "cleanup_runs",
    "cleanup_under_load",
    "insert_rows",
    "interleaved",
    "interleaved_threads",
    "memory_probe",
    "new_ids",
    "process_writers",
]


@dataclass
class Latencies:
    """Summary of many calls' latencies, in microseconds."""

    calls: int
    median_us: float
    p99_us: float
    worst_us: float
    ops_per_s: float = 0.0

    @classmethod
    def of(cls, samples_ns: Sequence[int], seconds: float = 0.0) -> Latencies:
        """Summarise samples (ns); ``seconds`` of wall time gives the throughput."""
        ordered = sorted(samples_ns)
        if not ordered:
            return cls(0, 0.0, 0.0, 0.0)
        n = len(ordered)
        return cls(
            calls=n,
            median_us=ordered[n // 2] / 1000,
            p99_us=ordered[min(n - 1, (n * 99) // 100)] / 1000,
            worst_us=ordered[-1] / 1000,
            ops_per_s=n / seconds if seconds else 0.0,
        )

    def to_dict(self) -> dict[str, float]:
        """The figures as a JSON-ready dict."""
        return asdict(self)


def interleaved(
    contenders: dict[str, Operation], ids: Sequence[str], *, rounds: int, per_round: int
) -> dict[str, Latencies]:
    """Run each contender ``per_round`` times per round, taking turns, first one warm-up."""
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    names = list(contenders)
    clock = time.perf_counter_ns
    position = 0
    for round_ in range(rounds + 1):
        order = names if round_ % 2 else names[::-1]
        for name in order:
            op, into = contenders[name], samples[name]
            for i in range(per_round):
                sid = ids[(position + i) % len(ids)]
                start = clock()
                op(sid)
                if round_:
                    into.append(clock() - start)
        position += per_round
    return {name: Latencies.of(values) for name, values in samples.items()}


def interleaved_threads(
    contenders: dict[str, tuple[Callable[[], Operation], int]],
    ids: Sequence[str],
    *,
    seconds: float,
    slices: int = 6,
) -> dict[str, Latencies]:
    """Each contender (an op factory and a thread count) for ``seconds`` in all, in
    ``slices`` turns taken in alternating order; latencies and throughput merged."""
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    elapsed = dict.fromkeys(contenders, 0.0)
    names = list(contenders)
    for turn in range(slices):
        for name in names if turn % 2 else names[::-1]:
            make_op, threads = contenders[name]
            got, took = _threads_once(make_op, ids, threads=threads, seconds=seconds / slices)
            samples[name] += got
            elapsed[name] += took
    return {name: Latencies.of(samples[name], elapsed[name]) for name in names}


def _threads_once(
    make_op: Callable[[], Operation], ids: Sequence[str], *, threads: int, seconds: float
) -> tuple[list[int], float]:
    barrier = threading.Barrier(threads + 1)
    results: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def work(index: int) -> None:
        op, into = make_op(), results[index]
        clock = time.perf_counter_ns
        barrier.wait()
        i = index * 7919
        try:
            while not stop.is_set():
                sid = ids[i % len(ids)]
                i += 13
                start = clock()
                op(sid)
                into.append(clock() - start)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return [x for r in results for x in r], elapsed


def _process_worker(
    kind: str, url: str, table: str, ids: list[str], seconds: float, pace: float
) -> Any:
    """One writer process: increments until ``seconds`` pass, sleeping ``pace`` seconds
    after each (0: flat out); reports acks and errors."""
    from sauce_sql.bench.clients import RawSQLite
    from sauce_sql.store import Store

    store = None
    if kind == "store":
        store = Store(url, table_name=table, clean_interval=None).start()
        op: Operation = lambda sid: store.inc_sequence(sid, "view")  # noqa: E731
    else:
        raw = RawSQLite(url.removeprefix("sqlite:///"), table, max_age=3600, synchronous="NORMAL")
        op = raw.ops()["inc_sequence"]
    acked, errors, samples = 0, 0, []
    clock = time.perf_counter_ns
    deadline = time.perf_counter() + seconds
    i = os.getpid()
    while time.perf_counter() < deadline:
        sid = ids[i % len(ids)]
        i += 17
        start = clock()
        try:
            op(sid)
        except Exception:
            errors += 1
            continue
        samples.append(clock() - start)
        acked += 1
        if pace:
            time.sleep(pace)
    if store is not None:
        store.close()
    return acked, errors, samples


def process_writers(
    kind: str,
    url: str,
    table: str,
    ids: list[str],
    *,
    processes: int,
    seconds: float,
    pace: float = 0.0,
) -> dict[str, Any]:
    """``processes`` processes incrementing at once, flat out or ``pace`` seconds apart;
    acknowledged against stored."""
    path = url.removeprefix("sqlite:///")
    before = _counter_sum(path, table)
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        args = [(kind, url, table, ids, seconds, pace)] * processes
        started = time.perf_counter()
        outcomes = pool.starmap(_process_worker, args)
        elapsed = time.perf_counter() - started
    acked = sum(o[0] for o in outcomes)
    stored = _counter_sum(path, table) - before
    latencies = Latencies.of([x for o in outcomes for x in o[2]], seconds)
    return {
        "latency": latencies.to_dict(),
        "acked": acked,
        "stored": stored,
        "errors": sum(o[1] for o in outcomes),
        "wall_s": elapsed,
    }


def _counter_sum(path: str, table: str) -> int:
    with sqlite3.connect(path) as connection:
        total = connection.execute(f"SELECT coalesce(sum(view_sequence), 0) FROM {table}")
        value: int = total.fetchone()[0]
    connection.close()
    return value


def new_ids(count: int) -> list[str]:
    """``count`` random session ids."""
    return [uuid.uuid4().hex for _ in range(count)]


def insert_rows(
    connection: Any, table: str, ids: Sequence[str], *, expired: bool, paramstyle: str
) -> None:
    """Insert sessions straight into ``table`` (expired ones an hour ago)."""
    now = datetime.now(timezone.utc)
    created = now - timedelta(hours=3 if expired else 0)
    expires = now - timedelta(hours=1) if expired else now + timedelta(days=1)
    columns = "session_id, user_agent, client_ip, user_id, view_sequence, event_sequence, "
    columns += "created_at, last_modified, expires_at"
    times: tuple[Any, ...] = (created, created, expires)
    if paramstyle == "qmark":
        times = tuple(datetime_to_sqlite(t) for t in times)
        sql = f"INSERT INTO {table} ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    else:
        sql = f"INSERT INTO {table} ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
    cursor = connection.cursor()
    cursor.executemany(sql, [(sid, "bench", None, None, 0, 0, *times) for sid in ids])
    cursor.close()


def cleanup_under_load(
    clean: Callable[[], int], write: Operation, ids: Sequence[str]
) -> dict[str, Any]:
    """Run ``clean`` while a writer thread calls ``write``; the writer's waits meanwhile."""
    stop, running = threading.Event(), threading.Event()
    spans: list[tuple[int, int]] = []

    def writer() -> None:
        clock, i = time.perf_counter_ns, 0
        while not stop.is_set():
            start = clock()
            write(ids[i % len(ids)])
            spans.append((start, clock()))
            i += 1
            running.set()

    thread = threading.Thread(target=writer)
    thread.start()
    running.wait()
    # The writer alone first, as a control: on a shared machine its worst wait is
    # partly the disk's and the other jobs', whatever the cleanup does.
    alone = time.perf_counter_ns()
    time.sleep(0.5)
    begin = time.perf_counter_ns()
    deleted = clean()
    end = time.perf_counter_ns()
    stop.set()
    thread.join()
    during = [e - s for s, e in spans if e > begin and s < end]
    before = [e - s for s, e in spans if s >= alone and e <= begin]
    return {
        "deleted": deleted,
        "total_ms": (end - begin) / 1e6,
        "writer": Latencies.of(during, (end - begin) / 1e9).to_dict(),
        "writer_alone": Latencies.of(before, (begin - alone) / 1e9).to_dict(),
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(directory: str, sessions: int, operations: int) -> dict[str, float]:
    from sauce_sql.store import Store

    path = os.path.join(directory, f"memory_{sessions}.db")
    store = Store(f"sqlite:///{path}", clean_interval=None).start()
    rss_start = _rss_mb()
    started = time.perf_counter()
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN")
    # Ids made from their number, so that no list of a million strings sits in the
    # memory being measured.
    for start in range(0, sessions, 50_000):
        chunk = [f"{i:032x}" for i in range(start, min(sessions, start + 50_000))]
        insert_rows(connection, "sessions", chunk, expired=False, paramstyle="qmark")
    connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    populate_s = time.perf_counter() - started
    step = max(1, sessions // operations)
    for i in range(operations):
        sid = f"{(i * step) % sessions:032x}"
        store.inc_sequence(sid, "view")
        store.lookup_session(sid)
    rss_after = _rss_mb()
    store.close()
    size = os.path.getsize(path) + _size(path + "-wal")
    return {
        "sessions": sessions,
        "populate_s": populate_s,
        "rss_mb_started": rss_start,
        "rss_mb_after_ops": rss_after,
        "bytes_per_session": size / sessions,
    }


def _size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def memory_probe(directory: str, sessions: int, operations: int) -> dict[str, float]:
    """In a fresh process: a store over ``sessions`` rows, RSS before and after
    ``operations`` increments and lookups spread over all of them, and bytes on disk."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: dict[str, float] = pool.apply(_memory_child, (directory, sessions, operations))
    return result


def cleanup_runs(
    contenders: dict[str, tuple[Callable[[], int], Operation]],
    prepare: Callable[[], None],
    ids: Sequence[str],
    *,
    runs: int,
) -> dict[str, dict[str, Any]]:
    """:func:`cleanup_under_load` ``runs`` times per contender, ``prepare`` (inserting
    the expired rows) before each round, the order alternating; per contender the run
    of median total time, with every run's total and the writer's worst wait of each.

    A single run is one sample of a shared machine: its total moves by a third between
    runs. The worst wait over all runs is what the writers' bound is checked against.
    """
    done: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(runs):
        prepare()
        for name in names if round_ % 2 == 0 else names[::-1]:
            clean, write = contenders[name]
            done[name].append(cleanup_under_load(clean, write, ids))
    summary: dict[str, dict[str, Any]] = {}
    for name, results in done.items():
        ordered = sorted(results, key=lambda r: float(r["total_ms"]))
        median = dict(ordered[len(ordered) // 2])
        median["totals_ms"] = [r["total_ms"] for r in results]
        median["worst_waits_ms"] = [r["writer"]["worst_us"] / 1000 for r in results]
        median["worst_wait_ms"] = max(median["worst_waits_ms"])
        summary[name] = median
    return summary
