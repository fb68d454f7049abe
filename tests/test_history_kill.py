"""SIGKILL during an archiving cleanup leaves every session exactly once, and during
history retention every session in history or in the aggregates, exactly once.

A child process archives a backlog of expired sessions in small batches and reports
each batch it finished; the test kills it with SIGKILL at a random moment, then counts
every id in the live table and in history: each must be in exactly one of them, with
its counters, kill after kill, until a last cleanup has archived them all.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from _support import SPAWN
from conftest import START, Backend

from sauce_sql import Store, cleanup
from sauce_sql.schema import history_table, sessions_table

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


def kill_during_cleanup(
    url: str, table: str, rng: random.Random, child: Callable[..., None] | None = None
) -> None:
    """Run an archiving child (or ``child``) and SIGKILL it at a random moment of its
    cleanup."""
    reader, writer = SPAWN.Pipe(duplex=False)
    target = archiver_child if child is None else child
    process = SPAWN.Process(target=target, args=(url, table, writer), daemon=True)
    process.start()
    writer.close()
    try:
        assert reader.poll(60), "the archiving child never started"
        assert reader.recv() == "ready"
        time.sleep(rng.uniform(0.005, 0.06))
    finally:
        process.kill()
        process.join(30)
        reader.close()
    assert process.exitcode == -9, "the child ended before it was killed"


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


AGENTS = ("Mozilla/5.0 Firefox/132.0", "Mozilla/5.0 Chrome/131.0 Safari/537.36", "curl/8.5", "")


def retirer_child(url: str, table: str, connection: Any) -> None:  # pragma: no cover
    """Child: retire every history row in batches of 50 rows."""
    cleanup.MIN_BATCH_ROWS = cleanup.START_BATCH_ROWS = cleanup.MAX_BATCH_ROWS = 50
    with Store(url, table_name=table, clean_interval=None, history_max_age=60) as store:
        connection.send("ready")
        store.cleanup(START + timedelta(days=1))
        connection.send("done")


def fill_history(url: str, table: str) -> None:
    """Create the tables and a history of sessions over many buckets, with varied
    browsers and counters."""
    with Store(url, table_name=table, clean_interval=None):
        pass
    history = history_table(table)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(
                history.insert(),
                [
                    {
                        "session_id": f"k{n:05d}",
                        "user_agent": AGENTS[n % len(AGENTS)],
                        "view_sequence": n % 7,
                        "event_sequence": n % 3,
                        "created_at": START - timedelta(minutes=n % 500),
                        "last_modified": START,
                        "expires_at": START + timedelta(seconds=n % 600),
                    }
                    for n in range(SESSIONS)
                ],
            )
    finally:
        engine.dispose()


def retention_census(url: str, table: str) -> dict[str, Any]:
    """History's rows, and per aggregate what it counts of retired sessions."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:

            def scalar(sql: str) -> int:
                return int(connection.exec_driver_sql(sql).scalar() or 0)

            return {
                "history": scalar(f'SELECT count(*) FROM "{table}_history"'),
                "sessions": scalar(f'SELECT sum(sessions) FROM "{table}_aggregates"'),
                "views": scalar(f'SELECT sum(views) FROM "{table}_aggregates"'),
                "history_views": scalar(f'SELECT sum(view_sequence) FROM "{table}_history"'),
                "families": scalar(f'SELECT sum(sessions) FROM "{table}_agg_browsers"'),
                "view_values": scalar(
                    f"SELECT sum(sessions) FROM \"{table}_agg_values\" WHERE counter = 'views'"
                ),
                "views_by_value": scalar(
                    f'SELECT sum(sessions * value) FROM "{table}_agg_values"'
                    " WHERE counter = 'views'"
                ),
                "event_values": scalar(
                    f"SELECT sum(sessions) FROM \"{table}_agg_values\" WHERE counter = 'events'"
                ),
            }
    finally:
        engine.dispose()


def test_sigkill_during_retention_counts_every_session_once(persistent_backend: Backend) -> None:
    """Kill after kill, every session is in history or in each aggregate (counts,
    browser families, views and events values), never both, never lost."""
    url, table = persistent_backend.url, persistent_backend.table_name
    fill_history(url, table)
    all_views = sum(n % 7 for n in range(SESSIONS))
    rng = random.Random(13)
    retired_counts = []
    for _ in range(KILLS):
        kill_during_cleanup(url, table, rng, child=retirer_child)
        found = retention_census(url, table)
        retired = found["sessions"]
        assert found["history"] + retired == SESSIONS
        assert found["families"] == found["view_values"] == found["event_values"] == retired
        assert found["views"] == found["views_by_value"] == all_views - found["history_views"]
        retired_counts.append(retired)
    assert 0 < retired_counts[-1] < SESSIONS, "no kill landed between batches"
    with Store(url, table_name=table, clean_interval=None, history_max_age=60) as store:
        store.cleanup(START + timedelta(days=1))
    found = retention_census(url, table)
    assert found["history"] == 0
    assert found["sessions"] == found["families"] == found["view_values"] == SESSIONS
    assert found["views"] == found["views_by_value"] == all_views
    print(f"FIGURES retention kills={KILLS}: retired after each kill {retired_counts}")
