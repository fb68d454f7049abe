"""Cleanup from every node: one background cleaner runs a round, the others skip it."""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from _support import admin, wait_for
from conftest import Backend, FakeClock, make_backend

from sauce_sql import Store

pytestmark = pytest.mark.postgresql


@pytest.fixture(params=["postgresql", "pgbouncer_transaction"])
def server_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL, directly and through transaction pooling."""
    yield from make_backend(request.param, tmp_path)


def expire(backend: Backend, count: int) -> None:
    """Write ``count`` sessions that expired an hour ago."""
    past = FakeClock(datetime.now(timezone.utc) - timedelta(hours=2))
    with Store(backend.url, table_name=backend.table_name, clean_interval=None, clock=past) as s:
        for n in range(count):
            s.new_session(f"old-{n}-{uuid.uuid4().hex[:6]}")


def test_a_cleaner_skips_the_round_another_server_is_running(server_backend: Backend) -> None:
    """While another app server holds the table's cleanup round, this store's
    background cleaner ticks without deleting (one cheap query a tick); once the
    round is over it deletes the expired rows. A called cleanup() never skips."""
    backend = server_backend
    expire(backend, 30)
    key = zlib.crc32(f"sauce_sql:cleanup:{backend.table_name}".encode())
    with (
        admin(backend.direct_url) as other_server,
        Store(backend.url, table_name=backend.table_name, clean_interval=0.05) as store,
    ):
        other_server.execute("BEGIN")
        other_server.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        wait_for(lambda: store.get_state().last_cleanup_at is not None, 10, "a tick")
        first_tick = store.get_state().last_cleanup_at
        wait_for(lambda: store.get_state().last_cleanup_at != first_tick, 10, "another tick")
        assert store.get_state().total_cleaned == 0
        other_server.execute("ROLLBACK")
        wait_for(lambda: store.get_state().total_cleaned == 30, 10, "the cleaner's round")
        other_server.execute("BEGIN")
        other_server.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        expire(backend, 5)
        assert store.cleanup() == 5
        other_server.execute("ROLLBACK")
