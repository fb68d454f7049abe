"""One clock for every app server: on PostgreSQL the server's, whatever the process's.

The skew is a real one between processes: a spawned child whose own clock (the
store's fallback clock, ``sauce_sql.store.utc_now``) runs ten minutes ahead.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from _support import run_children
from conftest import Backend

from sauce_sql import SessionExists, Store
from sauce_sql.clocks import ServerClock

pytestmark = pytest.mark.postgresql
SESSIONS = 50
SKEW = timedelta(minutes=10)


def skewed_server(url: str, table: str, results: Any) -> None:  # pragma: no cover - child
    """Child: an app server whose clock runs ten minutes ahead cleans up, creates and
    counts on the sessions another server serves."""
    import sauce_sql.store

    # The store's fallback clock, as a machine whose clock is wrong would have it.
    setattr(sauce_sql.store, "utc_now", lambda: datetime.now(timezone.utc) + SKEW)  # noqa: B010
    with Store(url, table_name=table, clean_interval=None, session_max_age=300) as store:
        deleted = store.cleanup()
        try:
            store.new_session("s-0")
            replaced = True
        except SessionExists:
            replaced = False
        counted = store.inc_sequence("s-1", "view")
    results.put({"deleted": deleted, "replaced": replaced, "counted": counted})


@pytest.fixture(params=["postgresql", "pgbouncer_transaction"])
def server_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    """PostgreSQL, directly and through transaction pooling."""
    from conftest import make_backend

    yield from make_backend(request.param, tmp_path)


def test_a_skewed_app_server_neither_expires_nor_replaces_live_sessions(
    server_backend: Backend,
) -> None:
    """With no clock given, a store whose process clock is ten minutes ahead deletes
    none of the sessions another store serves, cannot replace one, and counts on."""
    backend = server_backend
    with Store(
        backend.url, table_name=backend.table_name, clean_interval=None, session_max_age=300
    ) as store:
        for n in range(SESSIONS):
            store.new_session(f"s-{n}")
            store.inc_sequence(f"s-{n}", "view")
        (report,) = run_children(skewed_server, [(backend.url, backend.table_name)], 60)
        assert report == {"deleted": 0, "replaced": False, "counted": 2}
        assert all(store.session_exists(f"s-{n}") for n in range(SESSIONS))
        assert store.inc_sequence("s-0", "view") == 2


def test_the_server_clock_is_carried_forward_between_readings() -> None:
    """Between two readings the server's time moves on with the process's monotonic
    clock; a failed reading keeps the last one instead of failing the call."""
    readings = [datetime(2030, 1, 1, tzinfo=timezone.utc)]

    def read() -> datetime:
        if not readings:
            raise OSError("server down")
        return readings.pop()

    clock = ServerClock(read)
    clock.sync()
    first = clock()
    second = clock()
    assert datetime(2030, 1, 1, tzinfo=timezone.utc) <= first <= second
    assert second - first < timedelta(seconds=5)
    clock._next = 0.0  # due for a reading, and the server is down
    assert clock() >= second
