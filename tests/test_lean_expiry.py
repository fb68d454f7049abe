"""Sliding expiry within a resolution on PostgreSQL, exact on SQLite, and HOT updates.

On PostgreSQL an increment or assign_user leaves ``expires_at`` alone while it is less
than :func:`~sauce_sql.statements.expiry_resolution` short of now + max age, so steady
counting changes no indexed column and PostgreSQL can update the row in place (HOT).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from _support import libpq_dsn, wait_for
from conftest import PG_URL, Backend, FakeClock, StoreFactory, drop_tables, require_postgres

from sauce_sql import SessionNotFound, Store
from sauce_sql.statements import RESOLUTION_CAP, expiry_resolution

MAX_AGE = timedelta(seconds=3600)
Write = Callable[[Store, int], object]
WRITES: list[Write] = [
    lambda s, i: s.inc_sequence("sid", "view"),
    lambda s, i: s.inc_sequence("sid", "event"),
    lambda s, i: s.assign_user("sid", f"u{i % 3}"),
]


def lag_allowed(backend: Backend) -> timedelta:
    """How far short of now + max age a write may leave expires_at on ``backend``."""
    return expiry_resolution(MAX_AGE) if backend.dialect == "postgresql" else timedelta(0)


def test_the_resolution_is_a_bounded_share_of_the_max_age() -> None:
    """The resolution is 5% of the max age, and never more than 5 minutes."""
    assert expiry_resolution(timedelta(seconds=60)) == timedelta(seconds=3)
    assert expiry_resolution(MAX_AGE) == timedelta(minutes=3)
    assert expiry_resolution(timedelta(days=30)) == RESOLUTION_CAP == timedelta(minutes=5)


def test_expiry_lags_now_plus_max_age_by_less_than_the_resolution(
    backend: Backend, make_store: StoreFactory, clock: FakeClock
) -> None:
    """With lean_expiry, after every increment and assign_user, last_modified is now and
    expires_at lies between now + max age - resolution and now + max age (exactly the
    latter on SQLite); on PostgreSQL it is kept while within the resolution and moved
    once past it."""
    store = make_store(lean_expiry=True)
    allowed = lag_allowed(backend)
    store.new_session("sid")
    kept = moved = 0
    previous = clock.now + MAX_AGE
    for i in range(120):
        clock.advance(7)
        WRITES[i % len(WRITES)](store, i)
        session = store.lookup_session("sid")
        assert session is not None
        assert session.last_modified == clock.now
        latest = clock.now + MAX_AGE
        assert latest - allowed <= session.expires_at <= latest
        kept += session.expires_at == previous
        moved += session.expires_at == latest
        previous = session.expires_at
    if backend.dialect == "postgresql":
        # 840 s of writes 7 s apart against a 180 s resolution: about 1 in 26 moves it.
        assert (kept, moved) == (116, 4)
    else:
        assert (kept, moved) == (0, 120)


def test_reads_writes_and_cleanup_agree_on_a_lagging_expiry(
    backend: Backend, make_store: StoreFactory, clock: FakeClock
) -> None:
    """With lean_expiry, a session whose expires_at was kept lives until exactly that
    moment for every read, write and cleanup, which is never earlier than its last
    write + max age - resolution."""
    store = make_store(lean_expiry=True)
    store.new_session("sid")
    clock.advance(60)
    store.inc_sequence("sid", "view")
    session = store.lookup_session("sid")
    assert session is not None
    expires = session.expires_at
    assert expires >= clock.now + MAX_AGE - lag_allowed(backend)
    clock.now = expires - timedelta(microseconds=1)
    assert store.session_exists("sid")
    assert store.cleanup() == 0
    clock.now = expires
    assert store.lookup_session("sid") is None
    with pytest.raises(SessionNotFound):
        store.inc_sequence("sid", "view")
    with pytest.raises(SessionNotFound):
        store.assign_user("sid", "u1")
    assert store.cleanup() == 1


def test_an_expiry_past_now_plus_max_age_is_brought_back(
    shared_backend: Backend, clock: FakeClock
) -> None:
    """An increment by a store of a shorter max age than the one that wrote the session
    sets expires_at to its own now + max age: the resolution only ever shortens it."""
    shared_backend.migrate(shared_backend.table_name)

    def make(max_age: timedelta) -> Store:
        return Store(
            shared_backend.url,
            table_name=shared_backend.table_name,
            clean_interval=None,
            clock=clock,
            session_max_age=max_age.total_seconds(),
            lean_expiry=True,
        )

    with make(2 * MAX_AGE) as longer:
        longer.new_session("sid")
    clock.advance(1)
    with make(MAX_AGE) as store:
        store.inc_sequence("sid", "view")
        session = store.lookup_session("sid")
    assert session is not None
    assert session.expires_at == clock.now + MAX_AGE


@pytest.fixture
def pg_table() -> Iterator[str]:
    """A fresh table name on the test server, dropped afterwards."""
    require_postgres()
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    drop_tables(PG_URL, name)


def one_row(connection: psycopg.Connection[Any], sql: str, *args: object) -> tuple[Any, ...]:
    """The one row ``sql`` returns, as the server's statistics say now."""
    connection.execute("SELECT pg_stat_clear_snapshot()")
    row = connection.execute(sql, args).fetchone()
    assert row is not None
    return tuple(row)


def published_updates(connection: psycopg.Connection[Any], table: str) -> tuple[int, int]:
    """(updates, HOT updates) of ``table`` that the server has published."""
    sql = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = %s::regclass"
    upd, hot = one_row(connection, sql, table)
    return int(upd), int(hot)


@pytest.mark.postgresql
def test_steady_increments_are_hot_updates(pg_table: str) -> None:
    """On the real server's clock, 4,000 increments over 200 sessions are nearly all HOT
    updates, barely grow the indexes, and leave every expiry within the resolution
    below its last write + max age."""
    # HOT needs room on the page, which pruning the dead row versions makes. A
    # transaction that stays open elsewhere on the server with a transaction id holds
    # pruning off (in any database), so this runs as CI runs it: one test at a time.
    sessions, increments = 200, 4000
    resolution = expiry_resolution(MAX_AGE)
    index_size = "SELECT pg_indexes_size(%s::regclass)"
    with psycopg.connect(libpq_dsn(PG_URL), autocommit=True) as watcher:
        with Store(PG_URL, table_name=pg_table, clean_interval=None, lean_expiry=True) as store:
            ids = [store.new_session().session_id for _ in range(sessions)]
            (indexes_before,) = one_row(watcher, index_size, pg_table)
            for i in range(increments):
                store.inc_sequence(ids[(i * 7) % sessions], "view")
        # A server process publishes its statistics at the latest as it ends, which
        # the store's close() sets going.
        upd, hot = wait_for(
            lambda: (got := published_updates(watcher, pg_table))[0] >= increments and got,
            timeout=15,
            what="the server's statistics of the store's updates",
        )
        (indexes_after,) = one_row(watcher, index_size, pg_table)
        shortest, longest, views = one_row(
            watcher,
            f"SELECT min(expires_at - last_modified), max(expires_at - last_modified),"
            f" sum(view_sequence) FROM {pg_table}",
        )
    assert (upd, views) == (increments, increments)
    assert hot / upd >= 0.9, f"{hot} of {upd} HOT: another transaction held pruning off?"
    # The few updates that found no room on their page add index entries: a page or two,
    # where moving expires_at on every increment adds an entry to each index each time.
    assert indexes_after - indexes_before <= 16 * 1024
    assert MAX_AGE - resolution <= shortest <= longest <= MAX_AGE


def test_expiry_is_exact_by_default(backend: Backend, store: Store, clock: FakeClock) -> None:
    """Without lean_expiry every increment and assign_user sets expires_at to exactly
    now + max age, on PostgreSQL too (the contract's sliding expiry)."""
    store.new_session("sid")
    for i in range(10):
        clock.advance(7)
        WRITES[i % len(WRITES)](store, i)
        session = store.lookup_session("sid")
        assert session is not None
        assert session.expires_at == clock.now + MAX_AGE
