"""The store behind a real PgBouncer: prepared statements, transactions, the URL option.

PgBouncer in transaction or statement mode hands one server connection to many clients
in turn, so a statement psycopg prepared on one server connection (it names them per
client connection) may be asked for, by its name, on another one where that name means
another statement; and statement mode refuses every transaction.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from conftest import PG_URL, drop_tables, require_pgbouncer, require_postgres

from sauce_sql import InvalidInput, Store, StoreUnavailable

THREADS = 8
CALLS = 300
pytestmark = pytest.mark.postgresql


@pytest.fixture
def table() -> Iterator[str]:
    """A fresh table name on the test server, dropped afterwards."""
    require_postgres()
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    drop_tables(PG_URL, name)


def count_in_threads(store: Store) -> None:
    """THREADS threads, each on its own session, alternating view and event increments:
    two statements with the same parameters, the pair a pooler can mix up."""
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for i in range(CALLS):
                store.inc_sequence(f"s{t}", "view" if i % 2 == 0 else "event")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize("mode", ["transaction", "statement"])
def test_counters_land_in_their_own_column(table: str, mode: str) -> None:
    """Through transaction and statement pooling, with a pool smaller than the threads,
    every view increment lands in view_sequence and every event in event_sequence."""
    with Store(PG_URL, table_name=table, clean_interval=None) as direct:
        for t in range(THREADS):
            direct.new_session(f"s{t}")
    with Store(require_pgbouncer(mode), table_name=table, clean_interval=None) as store:
        count_in_threads(store)
        for t in range(THREADS):
            session = store.lookup_session(f"s{t}")
            assert session is not None
            assert (session.view_sequence, session.event_sequence) == (CALLS // 2, CALLS // 2)


def test_an_application_engine_is_made_safe_too(table: str) -> None:
    """An application's Engine with psycopg's default (prepare after 5 runs) still counts
    right through transaction pooling: the store's own connections never prepare."""
    engine = sa.create_engine(require_pgbouncer("transaction"))
    try:
        with Store(PG_URL, table_name=table, clean_interval=None) as direct:
            for t in range(THREADS):
                direct.new_session(f"s{t}")
        with Store(engine=engine, table_name=table, clean_interval=None) as store:
            count_in_threads(store)
            sessions = [store.lookup_session(f"s{t}") for t in range(THREADS)]
        assert {(s.view_sequence, s.event_sequence) for s in sessions if s} == {
            (CALLS // 2, CALLS // 2)
        }
    finally:
        engine.dispose()


def test_start_in_statement_mode_needs_no_transaction(table: str) -> None:
    """On an up-to-date table a store starts, counts and cleans up through statement
    pooling; a table that still needs its migration gives StoreUnavailable saying why."""
    url = require_pgbouncer("statement")
    with pytest.raises(StoreUnavailable, match="statement pooling"):
        Store(url, table_name=table, clean_interval=None).start()
    with Store(PG_URL, table_name=table, clean_interval=None):
        pass
    with Store(url, table_name=table, clean_interval=None) as store:
        session = store.new_session()
        assert store.inc_sequence(session.session_id, "view") == 1
        assert store.cleanup() == 0


def test_prepare_threshold_from_the_url(table: str) -> None:
    """`?prepare_threshold=N` (for a server or a pooler that keeps prepared statements)
    is honoured as a number; a value that is not one is InvalidInput, naming the option."""
    url = sa.make_url(PG_URL).update_query_dict({"prepare_threshold": "0"})
    with Store(url, table_name=table, clean_interval=None) as store:
        session = store.new_session()
        for n in range(1, 8):
            assert store.inc_sequence(session.session_id, "event") == n
    for bad in ("abc", "-1", "1.5"):
        wrong = sa.make_url(PG_URL).update_query_dict({"prepare_threshold": bad})
        with pytest.raises(InvalidInput, match="prepare_threshold"):
            Store(wrong, table_name=table)
