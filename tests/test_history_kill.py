"""SIGKILL during an archiving cleanup leaves every session exactly once.

A child process archives a backlog of expired sessions in small batches and reports
each batch it finished; the test kills it with SIGKILL at a random moment, then counts
every id in the live table and in history: each must be in exactly one of them, with
its counters, kill after kill, until a last cleanup has archived them all.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from _support import SPAWN
from conftest import START, Backend

from sauce_sql import Store, cleanup
from sauce_sql.schema import sessions_table

pytestmark = pytest.mark.slow

SESSIONS = 20000
KILLS = 5


def archiver_child(url: str, table: str, connection: Any) -> None:  # pragma: no cover
    """Child: archive every expired session in batches of 50 rows."""
    cleanup.MIN_BATCH_ROWS = cleanup.START_BATCH_ROWS = cleanup.MAX_BATCH_ROWS = 50
    with Store(url, table_name=table, clean_interval=None, history_max_age=None) as store:
        connection.send("ready")
        store.cleanup(START + timedelta(days=1))
        connection.send("done")


def fill(url: str, table: str) -> None:
    """Create the tables and a backlog of expired sessions with distinct counters."""
    with Store(url, table_name=table, clean_interval=None):
        pass
    live = sessions_table(table)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                live.insert(),
                [
                    {
                        "session_id": f"k{n:05d}",
                        "user_agent": "ua",
                        "view_sequence": n,
                        "event_sequence": 0,
                        "created_at": START,
                        "last_modified": START,
                        "expires_at": START + timedelta(seconds=n % 600),
                    }
                    for n in range(SESSIONS)
                ],
            )
    finally:
        engine.dispose()


def census(url: str, table: str) -> tuple[dict[str, int], dict[str, int]]:
    """Each id's view counter in the live table and in history."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            found = []
            for name in (table, f"{table}_history"):
                result = connection.exec_driver_sql(
                    f'SELECT session_id, view_sequence FROM "{name}"'
                )
                rows = [tuple(row) for row in result]
                ids = {sid: views for sid, views in rows}
                assert len(ids) == len(rows), f"an id twice in {name}"
                found.append(ids)
            return found[0], found[1]
    finally:
        engine.dispose()


def kill_during_cleanup(url: str, table: str, rng: random.Random) -> None:
    """Run an archiving child and SIGKILL it at a random moment of its cleanup."""
    reader, writer = SPAWN.Pipe(duplex=False)
    child = SPAWN.Process(target=archiver_child, args=(url, table, writer), daemon=True)
    child.start()
    writer.close()
    try:
        assert reader.poll(60), "the archiving child never started"
        assert reader.recv() == "ready"
        time.sleep(rng.uniform(0.005, 0.06))
    finally:
        child.kill()
        child.join(30)
        reader.close()
    assert child.exitcode == -9, "the child ended before it was killed"


def test_sigkill_during_archiving_leaves_every_session_once(persistent_backend: Backend) -> None:
    """Kill after kill, every session is live or archived, never both, never lost, with
    its counter; a last cleanup then archives the rest."""
    url, table = persistent_backend.url, persistent_backend.table_name
    fill(url, table)
    expected = {f"k{n:05d}": n for n in range(SESSIONS)}
    rng = random.Random(12)
    archived_counts = []
    for _ in range(KILLS):
        kill_during_cleanup(url, table, rng)
        live, archived = census(url, table)
        assert not live.keys() & archived.keys(), "a session both live and archived"
        assert {**live, **archived} == expected
        archived_counts.append(len(archived))
    assert archived_counts[-1] > 0, "no kill landed after a batch"
    with Store(url, table_name=table, clean_interval=None, history_max_age=None) as store:
        store.cleanup(START + timedelta(days=1))
    live, archived = census(url, table)
    assert live == {}
    assert archived == expected
    print(f"FIGURES archive kills={KILLS}: archived after each kill {archived_counts}")
