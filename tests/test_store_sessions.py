"""The Store's session operations on every backend: creation, counters, users, expiry
and revival."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from conftest import START, Backend, FakeClock, StoreFactory

from sauce_sql import (
    AnalyticsSession,
    ReviveSession,
    SauceSQLError,
    SequenceType,
    SessionExists,
    SessionNotFound,
    Store,
)

MAX_AGE = timedelta(seconds=3600)
DATETIME_FIELDS = ("created_at", "last_modified", "expires_at")


def assert_written_at(session: AnalyticsSession, now: datetime) -> None:
    """The session was last written at ``now`` and expires a max age later."""
    assert session.last_modified == now
    assert session.expires_at == now + MAX_AGE


def assert_aware_utc(session: AnalyticsSession) -> None:
    """Every datetime of the session is timezone-aware with a zero UTC offset."""
    for name in DATETIME_FIELDS:
        value = getattr(session, name)
        assert value.tzinfo is not None, name
        assert value.utcoffset() == timedelta(0), name


# -- new_session ----------------------------------------------------------------------


def test_new_session_starts_at_zero(store: Store) -> None:
    """A new session is live, holds what it was given and has both counters at 0."""
    session = store.new_session("sid", user_agent="ua", client_ip="192.0.2.1", user_id="u1")
    assert session == AnalyticsSession(
        session_id="sid",
        user_agent="ua",
        client_ip="192.0.2.1",
        user_id="u1",
        view_sequence=0,
        event_sequence=0,
        created_at=START,
        last_modified=START,
        expires_at=START + MAX_AGE,
    )
    assert store.lookup_session("sid") == session
    assert store.session_exists("sid")


def test_new_session_defaults(store: Store) -> None:
    """Without arguments new_session stores no user agent, IP or user."""
    session = store.new_session()
    assert (session.user_agent, session.client_ip, session.user_id) == ("", None, None)


def test_generated_ids_are_uuid4_hex(store: Store) -> None:
    """new_session without an id generates a distinct uuid4 hex id each time."""
    ids = {store.new_session().session_id for _ in range(5)}
    assert len(ids) == 5
    for sid in ids:
        assert sid == uuid.UUID(hex=sid).hex
        assert uuid.UUID(hex=sid).version == 4
        assert store.session_exists(sid)


def test_live_duplicate_raises_session_exists(store: Store, clock: FakeClock) -> None:
    """new_session on a live id raises SessionExists and leaves the session untouched."""
    store.new_session("sid", user_agent="first")
    store.inc_sequence("sid", "view")
    before = store.lookup_session("sid")
    clock.advance(10)
    with pytest.raises(SessionExists):
        store.new_session("sid", user_agent="second")
    assert store.lookup_session("sid") == before


def test_new_session_replaces_an_expired_row(store: Store, clock: FakeClock) -> None:
    """new_session over an expired row makes a new session with counters at 0."""
    store.new_session("sid", user_agent="old", user_id="u1")
    store.inc_sequence("sid", "view")
    store.inc_sequence("sid", "event")
    clock.advance(3600)
    session = store.new_session("sid", user_agent="new")
    assert (session.view_sequence, session.event_sequence) == (0, 0)
    assert (session.user_agent, session.user_id) == ("new", None)
    assert session.created_at == clock.now
    assert_written_at(session, clock.now)


# -- reads and expiry -----------------------------------------------------------------


def test_unknown_ids_are_not_found(store: Store) -> None:
    """lookup_session gives None and session_exists False for an id never used."""
    assert store.lookup_session("nobody") is None
    assert not store.session_exists("nobody")


def test_sessions_expire_after_max_age(store: Store, clock: FakeClock) -> None:
    """A session is live until its expires_at and invisible to reads from then on."""
    store.new_session("sid")
    clock.advance(3599)
    assert store.lookup_session("sid") is not None
    assert store.session_exists("sid")
    clock.advance(1)
    assert store.lookup_session("sid") is None
    assert not store.session_exists("sid")


def test_reads_change_nothing(store: Store, clock: FakeClock) -> None:
    """lookup_session and session_exists neither extend nor touch the session."""
    written = store.new_session("sid")
    clock.advance(3000)
    assert store.lookup_session("sid") == written
    assert store.session_exists("sid")
    clock.advance(600)
    assert store.lookup_session("sid") is None


def test_datetimes_are_aware_utc(make_store: StoreFactory) -> None:
    """Times from a clock in another zone come back as the same instants in UTC."""
    plus_five = timezone(timedelta(hours=5))
    clock = FakeClock(datetime(2026, 6, 1, 17, 30, tzinfo=plus_five))
    store = make_store(clock=clock)
    created = store.new_session("sid")
    revived = store.revive_session(ReviveSession("other"))
    looked_up = store.lookup_session("sid")
    assert looked_up is not None
    for session in (created, revived, looked_up):
        assert_aware_utc(session)
        assert session.created_at == datetime(2026, 6, 1, 12, 30, tzinfo=timezone.utc)


def test_real_clock_gives_aware_utc_now(make_store: StoreFactory, backend: Backend) -> None:
    """Without a clock the store stamps sessions with the current UTC time: the
    process's on SQLite, the database server's (here, the same machine's) on
    PostgreSQL, read within a round trip and carried forward since."""
    store = make_store(clock=None)
    before = datetime.now(timezone.utc)
    session = store.new_session("sid")
    after = datetime.now(timezone.utc)
    assert_aware_utc(session)
    # The databases keep microseconds, so nothing is rounded outside the interval.
    slack = timedelta(0) if backend.dialect == "sqlite" else timedelta(milliseconds=50)
    assert before - slack <= session.created_at <= after + slack


# -- inc_sequence ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("view", "view_sequence"),
        ("event", "event_sequence"),
        (SequenceType.VIEW, "view_sequence"),
        (SequenceType.EVENT, "event_sequence"),
    ],
)
def test_inc_sequence_counts_one_counter(store: Store, kind: str, field: str) -> None:
    """inc_sequence adds 1 to the named counter only and returns its new value."""
    store.new_session("sid")
    assert [store.inc_sequence("sid", kind) for _ in range(3)] == [1, 2, 3]
    session = store.lookup_session("sid")
    assert session is not None
    other = "event_sequence" if field == "view_sequence" else "view_sequence"
    assert (getattr(session, field), getattr(session, other)) == (3, 0)


def test_counters_are_independent(store: Store) -> None:
    """Views and events of one session, and counters of two sessions, do not mix."""
    store.new_session("a")
    store.new_session("b")
    assert store.inc_sequence("a", "view") == 1
    assert store.inc_sequence("a", "event") == 1
    assert store.inc_sequence("a", "view") == 2
    assert store.inc_sequence("b", "view") == 1


def test_inc_sequence_needs_a_live_session(store: Store, clock: FakeClock) -> None:
    """inc_sequence raises SessionNotFound, a KeyError, for a missing or expired id."""
    with pytest.raises(SessionNotFound):
        store.inc_sequence("missing", "view")
    store.new_session("sid")
    clock.advance(3600)
    with pytest.raises(KeyError):
        store.inc_sequence("sid", SequenceType.EVENT)
    # The failed call did not bring the row back.
    assert store.revive_session(ReviveSession("sid")).event_sequence == 0


@pytest.mark.parametrize("kind", ["views", "VIEW", "", "click", None, 1])
def test_inc_sequence_refuses_other_types(store: Store, kind: object) -> None:
    """A type other than "view" or "event" raises InvalidInput and counts nothing."""
    store.new_session("sid")
    with pytest.raises(ValueError, match="view"):
        store.inc_sequence("sid", kind)  # type: ignore[arg-type]
    session = store.lookup_session("sid")
    assert session is not None
    assert (session.view_sequence, session.event_sequence) == (0, 0)


# -- assign_user ----------------------------------------------------------------------


def test_assign_user_sets_and_clears(store: Store) -> None:
    """assign_user sets the user, replaces it, and clears it with None."""
    store.new_session("sid")
    users = []
    for user in ("u1", "u2", None):
        store.assign_user("sid", user)
        session = store.lookup_session("sid")
        assert session is not None
        users.append(session.user_id)
    assert users == ["u1", "u2", None]


def test_assign_user_needs_a_live_session(store: Store, clock: FakeClock) -> None:
    """assign_user raises SessionNotFound for a missing or an expired id."""
    with pytest.raises(SessionNotFound):
        store.assign_user("missing", "u1")
    store.new_session("sid")
    clock.advance(3600)
    with pytest.raises(SessionNotFound):
        store.assign_user("sid", None)


# -- sliding expiry -------------------------------------------------------------------


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.inc_sequence("sid", "view"),
        lambda s: s.inc_sequence("sid", "event"),
        lambda s: s.assign_user("sid", "u1"),
        lambda s: s.revive_session(ReviveSession("sid")),
    ],
    ids=["view", "event", "assign_user", "revive_session"],
)
def test_every_write_slides_expiry(store: Store, clock: FakeClock, write: object) -> None:
    """Each write sets last_modified to now and expires_at a max age later."""
    created = store.new_session("sid")
    clock.advance(3000)
    write(store)  # type: ignore[operator]
    session = store.lookup_session("sid")
    assert session is not None
    assert session.created_at == created.created_at
    assert_written_at(session, clock.now)
    clock.advance(3000)  # past the first expiry, within the new one
    assert store.session_exists("sid")


# -- revive_session -------------------------------------------------------------------


def test_revive_creates_a_missing_session(store: Store, clock: FakeClock) -> None:
    """Reviving an unknown id creates it with the revive's values and counters at 0."""
    revive = ReviveSession("sid", user_agent="ua", user_id="u1", client_ip="2001:db8::1")
    session = store.revive_session(revive)
    assert (session.session_id, session.user_agent, session.user_id) == ("sid", "ua", "u1")
    assert session.client_ip == "2001:db8::1"
    assert (session.view_sequence, session.event_sequence) == (0, 0)
    assert session.created_at == clock.now
    assert_written_at(session, clock.now)
    assert store.lookup_session("sid") == session


@pytest.mark.parametrize("expired", [False, True], ids=["live", "expired"])
def test_revive_keeps_counters_and_created_at(
    store: Store, clock: FakeClock, expired: bool
) -> None:
    """Reviving a live or expired row keeps its counters and created_at, takes the
    revive's user agent and IP, and keeps the user when the revive has none."""
    created = store.new_session("sid", user_agent="old", client_ip="192.0.2.1", user_id="u1")
    store.inc_sequence("sid", "view")
    store.inc_sequence("sid", "view")
    store.inc_sequence("sid", "event")
    clock.advance(5000 if expired else 100)
    session = store.revive_session(ReviveSession("sid", user_agent="new", client_ip="::1"))
    assert (session.view_sequence, session.event_sequence) == (2, 1)
    assert session.created_at == created.created_at
    assert (session.user_agent, session.client_ip, session.user_id) == ("new", "::1", "u1")
    assert_written_at(session, clock.now)
    assert store.inc_sequence("sid", "view") == 3


def test_revive_replaces_the_user_when_given(store: Store, clock: FakeClock) -> None:
    """A revive carrying a user id replaces the stored one."""
    store.new_session("sid", user_id="u1")
    clock.advance(4000)
    assert store.revive_session(ReviveSession("sid", user_id="u2")).user_id == "u2"


# -- maybe_revive_session -------------------------------------------------------------


def test_maybe_revive_returns_a_live_session_unchanged(store: Store, clock: FakeClock) -> None:
    """maybe_revive_session on a live id returns it as stored and writes nothing."""
    store.new_session("sid", user_agent="old", client_ip="192.0.2.1", user_id="u1")
    store.inc_sequence("sid", "view")
    before = store.lookup_session("sid")
    clock.advance(100)
    revive = ReviveSession("sid", user_agent="new", user_id="u2", client_ip="::1")
    assert store.maybe_revive_session(revive) == before
    assert store.lookup_session("sid") == before


def test_maybe_revive_revives_an_expired_session(store: Store, clock: FakeClock) -> None:
    """maybe_revive_session on an expired id revives it with its counters kept."""
    created = store.new_session("sid", user_id="u1")
    store.inc_sequence("sid", "event")
    clock.advance(3600)
    session = store.maybe_revive_session(ReviveSession("sid", user_agent="new"))
    assert (session.view_sequence, session.event_sequence) == (0, 1)
    assert (session.user_agent, session.user_id) == ("new", "u1")
    assert session.created_at == created.created_at
    assert_written_at(session, clock.now)


def test_maybe_revive_creates_a_missing_session(store: Store, clock: FakeClock) -> None:
    """maybe_revive_session on an unknown id creates a fresh live session."""
    session = store.maybe_revive_session(ReviveSession("sid", user_agent="ua"))
    assert (session.session_id, session.user_agent, session.view_sequence) == ("sid", "ua", 0)
    assert session.created_at == clock.now
    assert store.lookup_session("sid") == session


def test_revive_from_a_stored_dict(store: Store, clock: FakeClock) -> None:
    """A ReviveSession kept as a dict and read back revives the same session."""
    session = store.new_session(user_agent="ua", client_ip="192.0.2.1")
    store.inc_sequence(session.session_id, "view")
    kept = ReviveSession(session.session_id, "ua", None, "192.0.2.1").to_dict()
    clock.advance(7200)
    revived = store.maybe_revive_session(ReviveSession.from_dict(kept))
    assert (revived.session_id, revived.view_sequence) == (session.session_id, 1)


def test_not_found_is_a_library_error(store: Store) -> None:
    """SessionNotFound can be caught as SauceSQLError and names the id."""
    with pytest.raises(SauceSQLError, match="ghost"):
        store.inc_sequence("ghost", "view")
