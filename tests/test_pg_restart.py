"""A PostgreSQL server restart while the store is in use.

This restarts the shared test server, which interrupts every client of it for a
second or two; it lives in its own module so that it runs once and can be deselected
on its own. It needs root (pg_ctlcluster) and skips, saying why, without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from _support import CounterLog, assert_cleaner_works, tagged_url
from conftest import PG_URL, drop_tables, require_postgres

from sauce_sql import Store, StoreUnavailable

pytestmark = [pytest.mark.postgresql, pytest.mark.slow]

THREADS = 3
# A call may wait out one connect timeout (5 s) while the server is down, never more.
LONGEST_CALL = 12.0


def pg_version() -> str | None:
    """The version of the local cluster pg_ctlcluster manages, if any."""
    clusters = Path("/etc/postgresql")
    if not clusters.is_dir():
        return None
    versions = sorted((p.name for p in clusters.iterdir()), key=lambda v: [int(v)])
    return versions[-1] if versions else None


def restart_server(version: str) -> None:
    """Restart the local cluster (fast shutdown: every session is ended)."""
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(["pg_isready", "-q", "-t", "60", "-h", "127.0.0.1"], check=True, timeout=90)


@pytest.fixture
def restartable() -> str:
    """The cluster version to restart; skips when this process may not restart it."""
    require_postgres()
    version = pg_version()
    if version is None or shutil.which("pg_ctlcluster") is None or os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root and pg_ctlcluster on this machine")
    return version


def test_store_recovers_from_server_restart(restartable: str) -> None:
    """Calls during a restart raise StoreUnavailable within seconds; afterwards the store
    works again by itself, no increment is applied twice, and the cleaner still runs."""
    url, _name = tagged_url(PG_URL, "sauce_restart")
    table = f"t_{_name[-10:]}"
    store = Store(url, table_name=table, clean_interval=0.05).start()
    logs = [CounterLog() for _ in range(THREADS)]
    errors: list[BaseException] = []
    longest = [0.0] * THREADS
    progress = threading.Semaphore(0)
    stop = threading.Event()

    def work(n: int) -> None:
        sid, log = f"restart-{n}", logs[n]
        try:
            store.new_session(sid)
            while not stop.is_set():
                began = time.monotonic()
                try:
                    log.ok(store.inc_sequence(sid, "view"))
                    assert store.lookup_session(sid) is not None
                    progress.release()
                except StoreUnavailable:
                    log.fail()
                finally:
                    longest[n] = max(longest[n], time.monotonic() - began)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            progress.release()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    try:
        try:
            for worker in workers:
                worker.start()
            for _ in range(30):
                assert progress.acquire(timeout=30), "the workers made no progress"
            restart_server(restartable)
            # Drain what was acknowledged before the outage, then see new progress.
            while progress.acquire(blocking=False):
                pass
            for _ in range(30):
                assert progress.acquire(timeout=30), "the store did not recover"
        finally:
            stop.set()
            for worker in workers:
                worker.join(60)
        assert not errors, errors
        assert max(longest) < LONGEST_CALL
        assert sum(log.failed for log in logs) >= 1, "no call noticed the restart"
        for n, log in enumerate(logs):
            log.ok(store.inc_sequence(f"restart-{n}", "view"))
            session = store.lookup_session(f"restart-{n}")
            assert session is not None
            assert session.view_sequence == log.last
        assert_cleaner_works(store, url, table)
        acked = sum(log.acked for log in logs)
        failed = sum(log.failed for log in logs)
        print(f"FIGURES pg restart: acked={acked} failed={failed} longest={max(longest):.2f}s")
    finally:
        store.close()
        drop_tables(PG_URL, table)
