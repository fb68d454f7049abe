"""Processes on one SQLite file: writers of several processes, and one more cleaning.

Issue 8's item 9: 8 processes x 3 threads incrementing with ``durability="full"`` on
one file, while one more process archives a backlog of expired rows. Each thread
increments a session of its own, so the counts can be checked exactly: every
acknowledged increment must be stored. The figures are every call's latency, the
errors, and the write-ahead log's size (its peak, polled every 20 ms, and at the end).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import sqlite3
import threading
import time
from typing import Any

from sauce_sql.bench.workloads import Latencies, insert_rows, new_ids

__all__ = ["writers_on_one_file"]

#: How long the processes may take to start (spawning, imports, the schema).
_START = 60.0


def _writer(
    path: str, durability: str, threads: int, seconds: float, ready: Any, go: Any, results: Any
) -> None:
    from sauce_sql.errors import StoreUnavailable
    from sauce_sql.store import Store

    with Store(f"sqlite:///{path}", durability=durability, clean_interval=None) as store:
        sessions = [store.new_session() for _ in range(threads)]
        samples: list[list[int]] = [[] for _ in range(threads)]
        acked = [0] * threads
        errors: list[str] = []
        disorder = [0]

        def run(index: int) -> None:
            sid, into = sessions[index].session_id, samples[index]
            last = sessions[index].view_sequence
            clock = time.perf_counter_ns
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                start = clock()
                try:
                    count = store.inc_sequence(sid, "view")
                except StoreUnavailable as exc:
                    errors.append(str(exc)[:160])
                    continue
                finally:
                    into.append(clock() - start)
                if count != last + 1:
                    disorder[0] += 1
                last = count
                acked[index] += 1

        workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
        ready.put(os.getpid())
        go.wait()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        expected = {s.session_id: s.view_sequence + n for s, n in zip(sessions, acked, strict=True)}
        results.put(("writer", [x for s in samples for x in s], errors, expected, disorder[0]))


def _cleaner(path: str, durability: str, ready: Any, go: Any, results: Any) -> None:
    from sauce_sql.store import Store

    with Store(f"sqlite:///{path}", durability=durability, clean_interval=None) as store:
        ready.put(os.getpid())
        go.wait()
        started = time.perf_counter()
        cleaned = store.cleanup()
        results.put(("cleaner", cleaned, time.perf_counter() - started))


def _stored(path: str, ids: list[str]) -> dict[str, int]:
    connection = sqlite3.connect(path)
    try:
        found: dict[str, int] = {}
        for sid in ids:
            row = connection.execute(
                "SELECT view_sequence FROM sessions WHERE session_id = ?", (sid,)
            ).fetchone()
            found[sid] = -1 if row is None else int(row[0])
        return found
    finally:
        connection.close()


def writers_on_one_file(
    directory: str,
    *,
    processes: int = 8,
    threads: int = 3,
    seconds: float = 10.0,
    durability: str = "full",
    backlog: int = 100_000,
) -> dict[str, Any]:
    """Run the workload on a new file in ``directory``; return its figures.

    ``backlog`` expired rows are inserted first, and one more process archives them
    all (one ``cleanup()``) as the writers start; ``backlog=0`` runs no cleaner.
    """
    from sauce_sql.store import Store

    path = os.path.join(directory, "processes.db")
    for suffix in ("", "-wal", "-shm", "-sauce-cleanup"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    Store(f"sqlite:///{path}", clean_interval=None).start().close()
    if backlog:
        connection = sqlite3.connect(path)
        with connection:
            insert_rows(connection, "sessions", new_ids(backlog), expired=True, paramstyle="qmark")
        connection.close()
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    children = [
        context.Process(
            target=_writer, args=(path, durability, threads, seconds, ready, go, results)
        )
        for _ in range(processes)
    ]
    if backlog:
        children.append(
            context.Process(target=_cleaner, args=(path, durability, ready, go, results))
        )
    for child in children:
        child.start()
    wal = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                wal[0] = max(wal[0], os.path.getsize(path + "-wal"))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        for _ in children:
            ready.get(timeout=_START)
        watcher.start()
        load = os.getloadavg()[0]
        go.set()
        samples: list[int] = []
        errors: list[str] = []
        expected: dict[str, int] = {}
        disorder = 0
        cleaned: tuple[int, float] | None = None
        for _ in children:
            message = results.get(timeout=seconds + _START)
            if message[0] == "cleaner":
                cleaned = (message[1], message[2])
            else:
                samples += message[1]
                errors += message[2]
                expected.update(message[3])
                disorder += message[4]
    except queue.Empty:
        raise RuntimeError("a process of the workload did not answer in time") from None
    finally:
        stop.set()
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    stored = _stored(path, list(expected))
    lost = sum(max(expected[sid] - stored[sid], 0) for sid in expected)
    extra = sum(max(stored[sid] - expected[sid], 0) for sid in expected)
    end_wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    return {
        "processes": processes,
        "threads": threads,
        "seconds": seconds,
        "durability": durability,
        "latency": Latencies.of(samples, seconds).to_dict(),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "lost": lost,
        "extra": extra,
        "out_of_order": disorder,
        "cleaned": None if cleaned is None else cleaned[0],
        "cleanup_s": None if cleaned is None else cleaned[1],
        "wal_peak_mb": wal[0] / 1e6,
        "wal_end_mb": end_wal / 1e6,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def _main() -> None:
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--durability", default="full")
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.directory) as directory:
        figures = writers_on_one_file(
            directory,
            processes=args.processes,
            threads=args.threads,
            seconds=args.seconds,
            durability=args.durability,
            backlog=args.backlog,
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    _main()
