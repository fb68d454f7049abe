"""The Store's lifecycle and state, its engines and tables, and the revival race."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from conftest import Backend, FakeClock, StoreFactory, drop_tables
from sqlalchemy.pool import StaticPool

from sauce_sql import (
    AnalyticsSession,
    InvalidInput,
    ReviveSession,
    SauceSQLError,
    Store,
    StoreState,
    StoreUnavailable,
)

Operation = Callable[[Store], object]

# Every operation that needs a started store, with valid arguments.
OPERATIONS: dict[str, Operation] = {
    "new_session": lambda s: s.new_session("sid"),
    "lookup_session": lambda s: s.lookup_session("sid"),
    "session_exists": lambda s: s.session_exists("sid"),
    "inc_sequence": lambda s: s.inc_sequence("sid", "view"),
    "assign_user": lambda s: s.assign_user("sid", "user"),
    "revive_session": lambda s: s.revive_session(ReviveSession("sid")),
    "maybe_revive_session": lambda s: s.maybe_revive_session(ReviveSession("sid")),
    "cleanup": lambda s: s.cleanup(),
}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.01)
    return True


@pytest.fixture
def app_engine(backend: Backend) -> Iterator[sa.Engine]:
    """The application's own Engine on the backend (in memory: one shared connection)."""
    if backend.is_memory:
        engine = sa.create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        engine = sa.create_engine(backend.url, **backend.app_engine_options)
    yield engine
    engine.dispose()


@pytest.fixture
def make_engine_store(
    app_engine: sa.Engine, backend: Backend, clock: FakeClock
) -> Iterator[StoreFactory]:
    """Make started stores on the application's engine; closed before it is disposed."""
    stores: list[Store] = []

    def make(**options: object) -> Store:
        options.setdefault("table_name", backend.table_name)
        options.setdefault("clock", clock)
        options.setdefault("clean_interval", None)
        backend.migrate(str(options["table_name"]))
        store = Store(engine=app_engine, **options)  # type: ignore[arg-type]
        stores.append(store)
        return store.start()

    yield make
    for store in stores:
        store.close()


def count_rows(engine: sa.Engine, table_name: str) -> int:
    """How many rows the table holds, counted with the application's own SQL."""
    with engine.connect() as connection:
        return int(connection.execute(sa.text(f'SELECT count(*) FROM "{table_name}"')).scalar_one())


# -- lifecycle ----------------------------------------------------------------------


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_operations_need_a_started_store(backend: Backend, operation: Operation) -> None:
    """Every operation on a store never started raises SauceSQLError saying so."""
    store = Store(backend.url, table_name=backend.table_name, clean_interval=None)
    with pytest.raises(SauceSQLError, match="start"):
        operation(store)


@pytest.mark.parametrize("operation", OPERATIONS.values(), ids=OPERATIONS.keys())
def test_operations_after_close_raise(make_store: StoreFactory, operation: Operation) -> None:
    """Every operation on a closed store raises SauceSQLError saying it is not started."""
    store = make_store()
    store.close()
    with pytest.raises(SauceSQLError, match="start"):
        operation(store)


def test_start_and_close_are_idempotent(make_store: StoreFactory) -> None:
    """Starting a started store returns it and keeps its data; closing twice is harmless."""
    store = make_store()
    store.new_session("sid")
    assert store.start() is store
    assert store.session_exists("sid")
    store.close()
    store.close()


def test_context_manager_starts_and_closes(backend: Backend, clock: FakeClock) -> None:
    """``with Store(...) as store`` gives a started store and closes it on exit."""
    outer = Store(backend.url, table_name=backend.table_name, clock=clock, clean_interval=1)
    with outer as store:
        assert store is outer
        assert store.new_session("sid").session_id == "sid"
        assert store.get_state().cleaner_running
    assert not outer.get_state().cleaner_running
    with pytest.raises(SauceSQLError):
        outer.session_exists("sid")


def test_closed_store_can_start_again(make_store: StoreFactory) -> None:
    """A closed store started again serves operations and restarts its cleaner."""
    store = make_store(clean_interval=60)
    store.close()
    store.start()
    assert store.get_state().cleaner_running
    assert store.new_session("sid").view_sequence == 0
    assert store.inc_sequence("sid", "view") == 1


def test_get_state_answers_at_any_time(backend: Backend) -> None:
    """get_state works before start, while started and after close."""
    store = Store(backend.url, table_name=backend.table_name, clean_interval=None)
    before = store.get_state()
    store.start()
    during = store.get_state()
    store.close()
    after = store.get_state()
    assert isinstance(before, StoreState)
    assert before == during == after


def test_url_and_engine_together_are_refused(app_engine: sa.Engine) -> None:
    """Giving both a URL and an Engine raises InvalidInput."""
    with pytest.raises(InvalidInput):
        Store("sqlite://", engine=app_engine)


@pytest.mark.parametrize(
    "url",
    ["postgresql://postgres@127.0.0.1:1/test", "sqlite:////nonexistent-dir/sessions.db"],
    ids=["refused_port", "missing_directory"],
)
def test_unusable_database_raises_store_unavailable(url: str) -> None:
    """A database that cannot be reached or opened raises StoreUnavailable, cause chained."""
    store = Store(url, clean_interval=None)
    with pytest.raises(StoreUnavailable) as caught:
        store.start()
    assert caught.value.__cause__ is not None
    store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", sa.make_url("sqlite://")])
def test_memory_database_is_shared_by_threads(url: str | sa.URL) -> None:
    """An in-memory store is one database, whichever thread calls it."""
    seen: list[bool] = []
    with Store(url, clean_interval=None) as store:
        store.new_session("sid")
        thread = threading.Thread(target=lambda: seen.append(store.session_exists("sid")))
        thread.start()
        thread.join()
    assert seen == [True]


# -- state and cleanup ----------------------------------------------------------------


def test_state_reports_the_configuration(backend: Backend, make_store: StoreFactory) -> None:
    """get_state reports the dialect, table, max age, interval and no cleanup yet."""
    state = make_store(session_max_age=120.5, clean_interval=None).get_state()
    assert state.dialect == backend.url.split(":")[0].split("+")[0]
    assert state.table_name == backend.table_name
    assert state.session_max_age == 120.5
    assert state.clean_interval is None
    assert not state.cleaner_running
    assert (state.last_cleanup_at, state.last_cleanup_deleted, state.total_cleaned) == (
        None,
        None,
        0,
    )


def test_state_hides_the_password() -> None:
    """The URL in get_state shows the user and host but never the password."""
    store = Store("postgresql://alice:s3cret@db.example:5432/app", clean_interval=None)
    url = store.get_state().url
    assert "s3cret" not in url
    assert "alice" in url
    assert "db.example" in url


@pytest.mark.parametrize("keep_history", [False, True])
def test_cleanup_deletes_only_expired_rows(
    make_store: StoreFactory, clock: FakeClock, keep_history: bool
) -> None:
    """cleanup() removes and counts the expired rows; live ones stay as they were."""
    store = make_store(session_max_age=100, keep_history=keep_history)
    for sid in ("old1", "old2", "old3"):
        store.new_session(sid)
        store.inc_sequence(sid, "view")
    clock.advance(60)
    store.new_session("young")
    store.inc_sequence("young", "view")
    clock.advance(40)  # the old ones expire exactly now
    assert store.cleanup() == 3
    assert store.cleanup() == 0
    assert store.lookup_session("young") is not None
    # A deleted row is gone: reviving it starts over instead of keeping its counter;
    # an archived one comes back with it.
    assert store.revive_session(ReviveSession("old1")).view_sequence == int(keep_history)
    assert store.revive_session(ReviveSession("young")).view_sequence == 1


def test_cleanup_at_a_given_moment(make_store: StoreFactory, clock: FakeClock) -> None:
    """cleanup(now) deletes the rows expired at that moment, not at the clock's now."""
    store = make_store(session_max_age=100)
    store.new_session("sid")
    assert store.cleanup(clock.now + timedelta(seconds=99)) == 0
    assert store.cleanup(clock.now + timedelta(seconds=100)) == 1
    assert store.lookup_session("sid") is None


def test_cleanup_refuses_a_naive_moment(make_store: StoreFactory, clock: FakeClock) -> None:
    """cleanup(now) with a naive datetime raises InvalidInput and deletes nothing."""
    store = make_store(session_max_age=100)
    store.new_session("sid")
    with pytest.raises(InvalidInput):
        store.cleanup(datetime(2030, 1, 1))
    assert store.cleanup(clock.now + timedelta(seconds=99)) == 0


def test_state_records_cleanups(make_store: StoreFactory, clock: FakeClock) -> None:
    """get_state reports the latest cleanup's time and count and the running total."""
    store = make_store(session_max_age=10)
    store.new_session("a")
    store.new_session("b")
    clock.advance(10)
    assert store.cleanup() == 2
    state = store.get_state()
    assert (state.last_cleanup_at, state.last_cleanup_deleted) == (clock.now, 2)
    store.new_session("c")
    later = clock.now + timedelta(seconds=30)
    assert store.cleanup(later) == 1
    state = store.get_state()
    assert (state.last_cleanup_at, state.last_cleanup_deleted, state.total_cleaned) == (
        later,
        1,
        3,
    )
    store.cleanup(later)
    assert (store.get_state().last_cleanup_deleted, store.get_state().total_cleaned) == (0, 3)


def test_background_cleaner_deletes_expired_rows(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """With clean_interval set a running cleaner deletes expired rows; close stops it."""
    store = make_store(session_max_age=10, clean_interval=0.05)
    assert store.get_state().cleaner_running
    store.new_session("expiring")
    store.new_session("staying", user_agent="ua")
    clock.advance(5)
    store.inc_sequence("staying", "event")
    clock.advance(5)
    assert wait_for(lambda: store.get_state().total_cleaned == 1)
    state = store.get_state()
    assert state.last_cleanup_at is not None
    assert state.clean_interval == 0.05
    assert store.lookup_session("staying") is not None
    store.close()
    assert not store.get_state().cleaner_running


# -- engines, persistence, tables ------------------------------------------------------


def test_application_engine_is_never_disposed(
    backend: Backend, app_engine: sa.Engine, clock: FakeClock
) -> None:
    """A store given the application's Engine leaves it usable, data included, after close."""
    with Store(engine=app_engine, table_name=backend.table_name, clock=clock) as store:
        store.new_session("sid")
        store.inc_sequence("sid", "view")
    assert count_rows(app_engine, backend.table_name) == 1
    with Store(engine=app_engine, table_name=backend.table_name, clock=clock) as again:
        session = again.lookup_session("sid")
        assert session is not None
        assert session.view_sequence == 1


def test_data_survives_a_restart(shared_backend: Backend, clock: FakeClock) -> None:
    """Sessions written by one store are read back unchanged by a store opened later."""
    options: dict[str, object] = {
        "table_name": shared_backend.table_name,
        "clock": clock,
        "clean_interval": None,
    }
    with Store(shared_backend.url, **options) as store:  # type: ignore[arg-type]
        store.new_session("sid", user_agent="ua", client_ip="203.0.113.9", user_id="u1")
        store.inc_sequence("sid", "view")
        store.inc_sequence("sid", "event")
        written = store.lookup_session("sid")
    with Store(shared_backend.url, **options) as reopened:  # type: ignore[arg-type]
        assert reopened.lookup_session("sid") == written
        assert reopened.inc_sequence("sid", "view") == 2


def test_tables_of_different_names_are_independent(
    backend: Backend, make_engine_store: StoreFactory, clock: FakeClock
) -> None:
    """Two stores on two tables of one database share no sessions, counters or cleanups."""
    other_table = f"{backend.table_name}_b"
    try:
        first = make_engine_store(session_max_age=10)
        second = make_engine_store(table_name=other_table, session_max_age=1000)
        first.new_session("sid")
        second.new_session("sid")
        second.new_session("only_b")
        assert first.inc_sequence("sid", "view") == 1
        assert first.inc_sequence("sid", "view") == 2
        assert second.inc_sequence("sid", "view") == 1
        assert not first.session_exists("only_b")
        clock.advance(10)
        assert first.cleanup() == 1
        assert second.cleanup() == 0
        assert second.session_exists("sid")
        assert second.get_state().table_name == other_table
    finally:
        if not backend.is_memory:
            drop_tables(backend.direct_url, other_table)


# -- the maybe_revive_session race ------------------------------------------------------

THREADS = 8


def race_maybe_revive(store: Store, revive: ReviveSession) -> list[AnalyticsSession]:
    """Call maybe_revive_session from THREADS threads released at the same moment."""
    barrier = threading.Barrier(THREADS, timeout=30)

    def call() -> AnalyticsSession:
        barrier.wait()
        return store.maybe_revive_session(revive)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(call) for _ in range(THREADS)]
        return [future.result(timeout=60) for future in futures]


def test_concurrent_maybe_revive_creates_one_row(
    backend: Backend, app_engine: sa.Engine, make_engine_store: StoreFactory
) -> None:
    """Eight threads reviving one unknown id at once end with one fresh row, no error."""
    store = make_engine_store()
    revive = ReviveSession("raced", user_agent="ua", user_id="u1", client_ip="192.0.2.1")
    results = race_maybe_revive(store, revive)
    assert {r.session_id for r in results} == {"raced"}
    assert {(r.view_sequence, r.event_sequence, r.user_id) for r in results} == {(0, 0, "u1")}
    assert count_rows(app_engine, backend.table_name) == 1
    assert store.inc_sequence("raced", "view") == 1


def test_concurrent_maybe_revive_of_expired_row(
    backend: Backend, app_engine: sa.Engine, make_engine_store: StoreFactory, clock: FakeClock
) -> None:
    """Eight threads reviving one expired id at once keep its counters in one row."""
    store = make_engine_store(session_max_age=10)
    created = store.new_session("raced")
    store.inc_sequence("raced", "view")
    store.inc_sequence("raced", "event")
    clock.advance(30)
    results = race_maybe_revive(store, ReviveSession("raced", user_agent="ua2"))
    assert {(r.view_sequence, r.event_sequence) for r in results} == {(1, 1)}
    assert {r.created_at for r in results} == {created.created_at}
    assert {r.expires_at for r in results} == {clock.now + timedelta(seconds=10)}
    assert count_rows(app_engine, backend.table_name) == 1
