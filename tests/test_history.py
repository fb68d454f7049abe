"""History: cleanup archives, revival reaches history, retention keeps aggregates, erasure.

Every test runs on every backend (SQLite in memory and in a file, PostgreSQL directly
and through PgBouncer in transaction and statement pooling).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import Backend, FakeClock, StoreFactory

from sauce_sql import InvalidInput, ReviveSession, SessionExists, Store, cleanup

DAY = 24 * 3600.0


def rows(store: Store, table: str, *columns: str) -> list[tuple[Any, ...]]:
    """Rows of one of the store's tables, through its own engine, in key order."""
    name = store.get_state().table_name + table
    listed = ", ".join(columns)
    with store.engine.connect() as connection:
        result = connection.exec_driver_sql(f'SELECT {listed} FROM "{name}" ORDER BY {listed}')
        return [tuple(row) for row in result]


def aggregate_sums(store: Store) -> dict[str, int]:
    """The sums of every aggregates counter."""
    counters = ("sessions", "views", "events", "bounces", "identified", "revived")
    name = store.get_state().table_name + "_aggregates"
    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in counters)
    with store.engine.connect() as connection:
        row = connection.exec_driver_sql(f'SELECT {sums} FROM "{name}"').one()
    return dict(zip(counters, (int(v) for v in row), strict=True))


def test_cleanup_moves_expired_sessions_to_history(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Expired sessions leave the live table for history with their counters, user and
    times; cleanup returns how many left; live ones stay."""
    store = make_store(session_max_age=60)
    old = store.new_session("old", user_agent="ua-old", user_id="u1")
    store.inc_sequence("old", "view")
    store.inc_sequence("old", "event")
    clock.advance(120)
    store.new_session("young")
    assert store.cleanup() == 1
    assert store.get_state().total_cleaned == 1
    assert store.lookup_session("old") is None
    assert store.session_exists("young")
    archived = rows(store, "_history", "session_id", "user_agent", "user_id", "view_sequence")
    assert archived == [("old", "ua-old", "u1", 1)]
    assert rows(store, "", "session_id") == [("young",)]
    assert old.created_at < clock.now
    assert store.cleanup() == 0


def test_without_keep_history_cleanup_deletes(make_store: StoreFactory, clock: FakeClock) -> None:
    """keep_history=False deletes expired sessions and archives nothing, as before."""
    store = make_store(session_max_age=60, keep_history=False)
    store.new_session("gone")
    clock.advance(120)
    assert store.cleanup() == 1
    assert rows(store, "_history", "session_id") == []
    assert store.revive_session(ReviveSession("gone")).view_sequence == 0


def test_archiving_in_many_small_batches_moves_each_row_once(
    make_store: StoreFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tiny batches every expired row is in history exactly once and none is live."""
    monkeypatch.setattr(cleanup, "MIN_BATCH_ROWS", 3)
    monkeypatch.setattr(cleanup, "MAX_BATCH_ROWS", 5)
    store = make_store(session_max_age=60)
    expired = sorted(store.new_session().session_id for _ in range(23))
    clock.advance(120)
    live = [store.new_session().session_id for _ in range(4)]
    assert store.cleanup() == 23
    assert [sid for (sid,) in rows(store, "_history", "session_id")] == expired
    assert sorted(sid for (sid,) in rows(store, "", "session_id")) == sorted(live)


def test_archiving_starts_with_a_smaller_batch_than_deletion(
    make_store: StoreFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move costs more per row than a delete, so archiving's first batch is smaller
    than a plain cleanup's (which held writers past the batch budget); every row still
    goes, each once."""
    from sauce_sql import history

    sizes: list[int] = []
    batch = history._archive_batch

    def recorded(statements: Any, now: Any, rows: int) -> Any:
        sizes.append(rows)
        return (yield from batch(statements, now, rows))

    monkeypatch.setattr(history, "_archive_batch", recorded)
    store = make_store(session_max_age=60)
    expired = cleanup.START_BATCH_ROWS + 10
    for _ in range(expired):
        store.new_session()
    clock.advance(120)
    assert store.cleanup() == expired
    assert sizes[0] == cleanup.START_MOVE_ROWS < cleanup.START_BATCH_ROWS
    assert len(rows(store, "_history", "session_id")) == expired


@pytest.mark.parametrize("maybe", [False, True])
def test_revival_brings_an_archived_session_back(
    make_store: StoreFactory, clock: FakeClock, maybe: bool
) -> None:
    """Reviving an archived id continues its counters and created_at, takes the user
    from history when the revive has none, leaves no copy in history, and counts one
    revival."""
    store = make_store(session_max_age=60)
    first = store.new_session("back", user_agent="old-ua", user_id="u7")
    for _ in range(3):
        store.inc_sequence("back", "view")
    store.inc_sequence("back", "event")
    clock.advance(120)
    assert store.cleanup() == 1
    revive = ReviveSession("back", user_agent="new-ua")
    session = store.maybe_revive_session(revive) if maybe else store.revive_session(revive)
    assert (session.view_sequence, session.event_sequence) == (3, 1)
    assert session.created_at == first.created_at
    assert session.user_id == "u7"
    assert session.user_agent == "new-ua"
    assert session.expires_at == clock.now + (session.expires_at - session.last_modified)
    assert store.inc_sequence("back", "view") == 4
    assert rows(store, "_history", "session_id") == []
    assert aggregate_sums(store)["revived"] == 1


def test_revival_takes_the_latest_of_several_archived_sessions(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """An id archived twice (a new session under an old id) revives its latest session."""
    store = make_store(session_max_age=60)
    store.new_session("twice")
    store.inc_sequence("twice", "view")
    clock.advance(120)
    store.cleanup()
    store.new_session("twice")
    for _ in range(5):
        store.inc_sequence("twice", "view")
    clock.advance(120)
    store.cleanup()
    assert len(rows(store, "_history", "session_id")) == 2
    assert store.revive_session(ReviveSession("twice")).view_sequence == 5
    assert [views for (views,) in rows(store, "_history", "view_sequence")] == [1]


def test_revival_of_an_expired_row_is_counted_and_a_live_one_is_not(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """A revival of an expired (not yet archived) session counts as a revival; reviving a
    live session or a new id does not."""
    store = make_store(session_max_age=60)
    store.new_session("e")
    store.new_session("l")
    clock.advance(120)
    store.new_session("l")
    store.revive_session(ReviveSession("e"))
    store.revive_session(ReviveSession("l"))
    store.maybe_revive_session(ReviveSession("l"))
    store.revive_session(ReviveSession("new"))
    assert aggregate_sums(store)["revived"] == 1


def test_a_revival_at_the_moment_of_expiry_is_counted(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """A session is expired from its expires_at on: reviving it at exactly that moment
    is the revival of an expired session (counted), as the lookup then finds none."""
    store = make_store(session_max_age=60)
    store.new_session("edge")
    store.inc_sequence("edge", "view")
    clock.advance(60)
    assert store.lookup_session("edge") is None
    assert store.revive_session(ReviveSession("edge")).view_sequence == 1
    assert aggregate_sums(store)["revived"] == 1


def test_concurrent_maybe_revive_of_an_archived_id_ends_with_one_row(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Eight threads reviving one archived id at once all get its session, counters
    kept, and one live row stays, none in history."""
    store = make_store(session_max_age=60)
    store.new_session("race")
    for _ in range(4):
        store.inc_sequence("race", "view")
    clock.advance(120)
    assert store.cleanup() == 1
    barrier = threading.Barrier(8)
    results: list[Any] = []

    def revive() -> None:
        barrier.wait()
        try:
            results.append(store.maybe_revive_session(ReviveSession("race")))
        except Exception as exc:  # collected, so the assertion shows it
            results.append(exc)

    threads = [threading.Thread(target=revive) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(getattr(r, "view_sequence", None) == 4 for r in results), results
    assert len(results) == 8
    assert rows(store, "", "session_id") == [("race",)]
    assert rows(store, "_history", "session_id") == []


def test_retention_folds_old_history_into_aggregates(
    make_store: StoreFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History rows past history_max_age are deleted in batches after their counts went
    into the aggregates; younger history stays."""
    monkeypatch.setattr(cleanup, "MIN_BATCH_ROWS", 2)
    monkeypatch.setattr(cleanup, "MAX_BATCH_ROWS", 3)
    store = make_store(session_max_age=60, history_max_age=10 * DAY)
    for n in range(7):
        store.new_session(f"old-{n}", user_id="u" if n % 2 else None)
        for _ in range(n):
            store.inc_sequence(f"old-{n}", "view")
        store.inc_sequence(f"old-{n}", "event")
    clock.advance(3600)
    store.cleanup()
    clock.advance(5 * DAY)
    store.new_session("recent")
    clock.advance(120)
    store.cleanup()
    assert len(rows(store, "_history", "session_id")) == 8
    clock.advance(6 * DAY)  # the first seven are now 11 days past expiry, "recent" 6
    assert store.cleanup() == 0
    assert rows(store, "_history", "session_id") == [("recent",)]
    sums = aggregate_sums(store)
    assert sums == {
        "sessions": 7,
        "views": sum(range(7)),
        "events": 7,
        "bounces": 2,  # 0 and 1 views
        "identified": 3,
        "revived": 0,
    }


def test_history_max_age_none_keeps_history_forever(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """With history_max_age=None no history row is ever removed."""
    store = make_store(session_max_age=60, history_max_age=None)
    store.new_session("kept")
    clock.advance(120)
    store.cleanup()
    clock.advance(100 * 365 * DAY)
    store.cleanup()
    assert rows(store, "_history", "session_id") == [("kept",)]


@pytest.mark.parametrize(
    ("mode", "v4", "v6"),
    [
        ("mask", "203.0.113.0", "2001:db8:1::"),
        ("drop", None, None),
        ("keep", "203.0.113.77", "2001:db8:1:2::7"),
    ],
)
def test_history_ip_is_masked_dropped_or_kept(
    make_store: StoreFactory, clock: FakeClock, mode: str, v4: str | None, v6: str | None
) -> None:
    """Archived client IPs are masked to their network by default, or dropped or kept
    as history_ip says; sessions without an IP stay without one."""
    store = make_store(session_max_age=60, history_ip=mode)
    store.new_session("a4", client_ip="203.0.113.77")
    store.new_session("b6", client_ip="2001:db8:1:2::7")
    store.new_session("c0")
    clock.advance(120)
    store.cleanup()
    assert rows(store, "_history", "session_id", "client_ip") == [
        ("a4", v4),
        ("b6", v6),
        ("c0", None),
    ]


def test_stores_of_one_table_keep_their_own_ip_mode(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """Stores of one table in one process share compiled statements only when their
    options match: each of three, one per history_ip mode, archives as its own says."""
    expected = {"mask": "203.0.113.0", "drop": None, "keep": "203.0.113.77"}
    for mode, ip in expected.items():
        store = make_store(session_max_age=60, history_ip=mode)
        store.new_session(f"s-{mode}", client_ip="203.0.113.77")
        clock.advance(120)
        store.cleanup()
        assert (f"s-{mode}", ip) in rows(store, "_history", "session_id", "client_ip")


def test_masking_is_the_default(make_store: StoreFactory, clock: FakeClock) -> None:
    """A store given no history_ip masks archived IPs."""
    store = make_store(session_max_age=60)
    store.new_session("a", client_ip="198.51.100.200")
    clock.advance(120)
    store.cleanup()
    assert rows(store, "_history", "client_ip") == [("198.51.100.0",)]


def test_forget_user_and_forget_session_erase_live_and_history(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """forget_user deletes every session of the user, live and archived, and says how
    many; forget_session does the same for one id; others stay."""
    store = make_store(session_max_age=60)
    store.new_session("u-old", user_id="alice")
    store.new_session("x-old")
    clock.advance(120)
    store.cleanup()
    store.new_session("u-live", user_id="alice")
    store.new_session("x-old")  # the id again, live: archived and live rows
    store.new_session("bob", user_id="bob")
    assert store.forget_user("alice") == 2
    assert store.forget_user("alice") == 0
    assert store.forget_session("x-old") == 2
    assert store.forget_session("nobody") == 0
    assert rows(store, "", "session_id") == [("bob",)]
    assert rows(store, "_history", "session_id") == []


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"keep_history": "yes"}, TypeError),
        ({"keep_history": 1}, TypeError),
        ({"history_max_age": 0}, InvalidInput),
        ({"history_max_age": -5}, InvalidInput),
        ({"history_max_age": float("inf")}, InvalidInput),
        ({"history_max_age": 10**12}, InvalidInput),
        ({"history_max_age": "400d"}, TypeError),
        ({"history_ip": "hash"}, InvalidInput),
        ({"history_ip": None}, InvalidInput),
    ],
)
def test_history_options_are_validated(options: dict[str, Any], error: type[Exception]) -> None:
    """Bad history options are refused in the constructor, before any database work."""
    with pytest.raises(error):
        Store("sqlite://", **options)


@pytest.mark.parametrize(
    ("call", "argument", "error"),
    [
        ("forget_user", "", InvalidInput),
        ("forget_user", None, TypeError),
        ("forget_user", 5, TypeError),
        ("forget_session", "a\x00b", InvalidInput),
        ("forget_session", "x" * 256, InvalidInput),
    ],
)
def test_forget_refuses_bad_ids(store: Store, call: str, argument: Any, error: type) -> None:
    """forget_user and forget_session refuse bad ids and delete nothing."""
    store.new_session("kept", user_id="kept")
    with pytest.raises(error):
        getattr(store, call)(argument)
    assert store.session_exists("kept")


def test_history_tables_belong_to_their_table(
    backend: Backend, make_store: StoreFactory, clock: FakeClock
) -> None:
    """Two session tables in one database archive into their own history tables."""
    if backend.is_memory:
        pytest.skip("each in-memory store has its own database")
    other_name = f"{backend.table_name}_two"
    try:
        first = make_store(session_max_age=60)
        second = make_store(session_max_age=60, table_name=other_name)
        first.new_session("one")
        second.new_session("two")
        clock.advance(120)
        first.cleanup()
        second.cleanup()
        assert rows(first, "_history", "session_id") == [("one",)]
        assert rows(second, "_history", "session_id") == [("two",)]
    finally:
        engine = sa.create_engine(backend.direct_url)
        with engine.begin() as connection:
            for suffix in ("_history", "_aggregates", "_agg_browsers", "_agg_values", ""):
                connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{other_name}{suffix}"')
            connection.exec_driver_sql(f'DROP TABLE IF EXISTS "alembic_version_{other_name}"')
        engine.dispose()


def test_a_new_session_over_an_expired_row_archives_that_row(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """new_session under the id of an expired row that no cleanup has archived yet
    replaces it only after moving it to history: the old session is kept, once, with
    its counters; a live id is still refused and copies nothing."""
    store = make_store(session_max_age=60)
    store.new_session("reused", user_agent="ua-old", user_id="u1")
    store.inc_sequence("reused", "view")
    store.inc_sequence("reused", "view")
    clock.advance(120)
    fresh = store.new_session("reused", user_agent="ua-new")
    assert (fresh.view_sequence, fresh.user_agent, fresh.user_id) == (0, "ua-new", None)
    columns = ("session_id", "user_agent", "user_id", "view_sequence")
    assert rows(store, "_history", *columns) == [("reused", "ua-old", "u1", 2)]
    assert rows(store, "", *columns) == [("reused", "ua-new", None, 0)]
    with pytest.raises(SessionExists):
        store.new_session("reused")
    assert len(rows(store, "_history", "session_id")) == 1
    clock.advance(120)
    assert store.cleanup() == 1  # the new session, archived beside the old one
    assert rows(store, "_history", "user_agent") == [("ua-new",), ("ua-old",)]
    assert store.forget_session("reused") == 2


def test_without_keep_history_a_new_session_replaces_an_expired_row(
    make_store: StoreFactory, clock: FakeClock
) -> None:
    """keep_history=False: the expired row is replaced and nothing archived, as before."""
    store = make_store(session_max_age=60, keep_history=False)
    store.new_session("reused")
    clock.advance(120)
    store.new_session("reused")
    assert rows(store, "_history", "session_id") == []
    assert rows(store, "", "session_id") == [("reused",)]
