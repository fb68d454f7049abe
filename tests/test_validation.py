"""Arguments are checked before the database is touched: what is refused, what is
normalised, and that a refused call writes nothing."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import Backend, FakeClock, StoreFactory

from sauce_sql import (
    InvalidInput,
    ReviveSession,
    SauceSQLError,
    SessionExists,
    SessionNotFound,
    Store,
)

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=timezone.utc)
BAD_IDS = {
    "empty": "",
    "256 chars": "x" * 256,
    "NUL": "a\x00b",
    "newline": "a\nb",
    "tab": "a\tb",
    "escape": "\x1b[31m",
    "DEL": "a\x7f",
    "C1 control": "a\x85b",
}

# Every call that takes a session id, applied to a candidate id.
ID_CALLS: dict[str, Callable[[Store, str], object]] = {
    "new_session": lambda s, sid: s.new_session(sid),
    "lookup_session": lambda s, sid: s.lookup_session(sid),
    "session_exists": lambda s, sid: s.session_exists(sid),
    "inc_sequence": lambda s, sid: s.inc_sequence(sid, "view"),
    "assign_user": lambda s, sid: s.assign_user(sid, "u1"),
    "revive_session": lambda s, sid: s.revive_session(ReviveSession(sid)),
    "maybe_revive_session": lambda s, sid: s.maybe_revive_session(ReviveSession(sid)),
}


# -- ids ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_bad_session_ids_are_refused(store: Store, bad: str) -> None:
    """Every call taking a session id refuses an empty, over-long or control-char id."""
    for call in ID_CALLS.values():
        with pytest.raises(InvalidInput):
            call(store, bad)
    # Nothing was written: a cleanup far in the future finds no row at all.
    assert store.cleanup(FAR_FUTURE) == 0


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_bad_user_ids_are_refused(store: Store, bad: str) -> None:
    """new_session, assign_user and revivals refuse a bad user id and write nothing."""
    written = store.new_session("sid", user_id="u1")
    with pytest.raises(InvalidInput):
        store.new_session("other", user_id=bad)
    with pytest.raises(InvalidInput):
        store.assign_user("sid", bad)
    with pytest.raises(InvalidInput):
        store.revive_session(ReviveSession("other", user_id=bad))
    with pytest.raises(InvalidInput):
        store.maybe_revive_session(ReviveSession("other", user_id=bad))
    assert store.lookup_session("sid") == written
    assert not store.session_exists("other")


@pytest.mark.parametrize("sid", ["x" * 255, "a", "séance-✓-会话", "with space", "a/b?c=d"])
def test_printable_ids_are_accepted(store: Store, sid: str) -> None:
    """Ids of 1 to 255 printable characters, any script, are stored as given."""
    store.new_session(sid, user_id=sid)
    session = store.lookup_session(sid)
    assert session is not None
    assert (session.session_id, session.user_id) == (sid, sid)


def test_wrong_types_raise_type_error(store: Store) -> None:
    """Arguments of the wrong type raise TypeError, not a database error."""
    with pytest.raises(TypeError):
        store.new_session(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.lookup_session(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.new_session("sid", user_agent=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.new_session("sid", user_id=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.revive_session({"session_id": "sid"})  # type: ignore[arg-type]
    assert not store.session_exists("sid")


@pytest.mark.parametrize(
    "data",
    [
        {"session_id": 0},
        {"session_id": ["a"]},
        {"session_id": "sid", "user_agent": 0},
        {"session_id": "sid", "user_agent": {}},
        {"session_id": "sid", "user_id": 42},
        {"session_id": "sid", "client_ip": 3232235777},
        ["session_id", "sid"],
    ],
    ids=repr,
)
def test_malformed_revive_dict_from_a_client_is_bad_input(store: Store, data: object) -> None:
    """A client's malformed revive dict is InvalidInput (a SauceSQLError, so an app
    answers bad input rather than 500) on the way to either revival, and writes nothing."""
    for revive in (store.revive_session, store.maybe_revive_session):
        with pytest.raises(InvalidInput):
            revive(ReviveSession.from_dict(data))  # type: ignore[arg-type]
    assert store.cleanup(FAR_FUTURE) == 0


# -- user agents ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (X11; Linux x86_64)"),
        ("Mozilla\x00/5.0\x00", "Mozilla/5.0"),
        ("tab\there\nnewline \x1b esc", "tab\there\nnewline \x1b esc"),
        ("Émoji 🚀 агент", "Émoji 🚀 агент"),
        ("a" * 512, "a" * 512),
        ("a" * 513, "a" * 512),
        ("b" * 10_000, "b" * 512),
        ("", ""),
    ],
    ids=["plain", "NUL", "controls", "unicode", "512", "513", "10000", "empty"],
)
def test_user_agent_is_cleaned_never_refused(store: Store, given: str, stored: str) -> None:
    """A user agent loses its NULs and is cut to 512 characters; the rest is kept."""
    assert store.new_session("sid", user_agent=given).user_agent == stored
    assert store.revive_session(ReviveSession("rev", user_agent=given)).user_agent == stored
    session = store.lookup_session("sid")
    assert session is not None
    assert session.user_agent == stored


# -- client IPs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::1", "::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:db8::ff00:42:8329"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        ("::FFFF:C000:0201", "::ffff:192.0.2.1"),
        ("", None),
        (None, None),
    ],
)
def test_client_ip_is_stored_canonical(store: Store, given: str | None, stored: str | None) -> None:
    """Client IPs are stored in canonical form, IPv4-mapped ones in dotted form; "" is None."""
    assert store.new_session("sid", client_ip=given).client_ip == stored
    assert store.revive_session(ReviveSession("rev", client_ip=given)).client_ip == stored


@pytest.mark.parametrize(
    "bad",
    ["not-an-ip", "256.1.1.1", "1.2.3", "192.0.2.1/24", " 192.0.2.1", "::1::", "localhost"],
)
def test_unparseable_client_ip_is_refused(store: Store, bad: str) -> None:
    """A client_ip that is no IP address raises InvalidInput and stores nothing."""
    with pytest.raises(InvalidInput):
        store.new_session("sid", client_ip=bad)
    with pytest.raises(InvalidInput):
        store.maybe_revive_session(ReviveSession("sid", client_ip=bad))
    assert not store.session_exists("sid")


@pytest.mark.parametrize(
    "ip",
    [
        "fe80::1%eth0",
        "fe80::1%en0",
        "fe80::1%wlp2s0",
        "fe80::1%eth0.100",
        "fe80::1%vlan_7",
        "fe80::1%br-1a2b3c4d5e6f",  # 15 characters, Linux's longest
        "fe80::1%25",
        "fe80::1%4294967295",
    ],
)
def test_zone_ids_that_are_interface_names_are_kept(store: Store, ip: str) -> None:
    """An IPv6 zone id that is an interface name or number is kept with the address."""
    assert store.new_session("sid", client_ip=ip).client_ip == ip


@pytest.mark.parametrize(
    "ip",
    [
        "fe80::1%<img src=x onerror=alert(1)>",
        "fe80::1%eth0;DROP TABLE sessions",
        "fe80::1%eth 0",
        "fe80::1%eth\\0",
        "fe80::1%'",
        "fe80::1%br-1a2b3c4d5e6f7",  # 16 characters
        "fe80::1%\u00e9th0",
        "fe80::1%\u0661",  # an Arabic-Indic digit
        "::ffff:192.0.2.1%<b>",
    ],
)
def test_zone_ids_that_are_not_interface_names_are_refused(store: Store, ip: str) -> None:
    """An IPv6 zone id that is not an interface name (letters, digits, ".", "_", "-",
    at most 15 characters) is InvalidInput, and nothing is stored."""
    with pytest.raises(InvalidInput, match="zone"):
        store.new_session("sid", client_ip=ip)
    with pytest.raises(InvalidInput, match="zone"):
        store.revive_session(ReviveSession("sid", client_ip=ip))
    assert store.cleanup(FAR_FUTURE) == 0


HUGE = 8192
# Calls that refuse a huge value, each quoting it in its message.
HUGE_REFUSALS: dict[str, Callable[[Store], object]] = {
    "client_ip": lambda s: s.new_session("sid", client_ip="x" * HUGE),
    "zone id": lambda s: s.new_session("sid", client_ip="fe80::1%" + "x" * HUGE),
    "session_id with a NUL": lambda s: s.new_session("\x00" + "x" * 250),
    "sequence type": lambda s: s.inc_sequence("sid", "v" * HUGE),
    "table_name": lambda s: Store("sqlite://", table_name="t" * HUGE),
    "durability": lambda s: Store("sqlite://", durability="d" * HUGE),
    "session_max_age": lambda s: Store("sqlite://", session_max_age=10**5000),
    "unparseable url": lambda s: Store("x" * HUGE),
    "unknown database": lambda s: Store("x" * HUGE + "://u@h/db"),
    "naive datetime": lambda s: s.cleanup(_NaiveWithHugeRepr(2026, 1, 1)),
}


class _NaiveWithHugeRepr(datetime):
    """A naive datetime whose repr is 8 KB."""

    def __repr__(self) -> str:
        return "x" * HUGE


@pytest.mark.parametrize("refusal", HUGE_REFUSALS.values(), ids=HUGE_REFUSALS.keys())
def test_refused_values_are_not_echoed_whole(
    store: Store, refusal: Callable[[Store], object]
) -> None:
    """A refused value is quoted as a short prefix with its length, never whole: an
    8 KB header gives a message of a line, not of 8 KB."""
    with pytest.raises(InvalidInput) as caught:
        refusal(store)
    assert len(str(caught.value)) < 250, str(caught.value)


def test_session_errors_quote_a_long_id_briefly(store: Store) -> None:
    """SessionExists and SessionNotFound quote a 255-character id as a short prefix
    (the id itself stays whole on the error's session_id)."""
    sid = "s" * 255
    store.new_session(sid)
    with pytest.raises(SessionExists) as exists:
        store.new_session(sid)
    with pytest.raises(SessionNotFound) as missing:
        store.inc_sequence("m" * 255, "view")
    for error in (exists.value, missing.value):
        assert len(str(error)) < 120, str(error)
    assert (exists.value.session_id, missing.value.session_id) == (sid, "m" * 255)


# -- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1sessions",
        "a-b",
        "a b",
        "a.b",
        "sessions; DROP TABLE users",
        'x"; DROP TABLE y; --',
        "sessions--",
        "séances",
        "a" * 41,
    ],
)
def test_bad_table_names_are_refused(name: str) -> None:
    """A table name that is not a plain identifier of at most 40 chars is InvalidInput."""
    with pytest.raises(InvalidInput):
        Store("sqlite://", table_name=name)


@pytest.mark.parametrize("name", ["a" * 40, "_private", "Sessions_2026", "t"])
def test_plain_table_names_are_accepted(name: str) -> None:
    """Letters, digits and underscores up to 40 characters make a valid table name,
    folded to lower case."""
    with Store("sqlite://", table_name=name, clean_interval=None) as store:
        assert store.get_state().table_name == name.lower()
        assert store.new_session("sid").view_sequence == 0


def test_table_names_differing_in_case_are_one_table(shared_backend: Backend) -> None:
    """Table names are case-insensitive on every backend: "Sessions_X", "SESSIONS_X" and
    "sessions_x" are one table (its name in lower case), with one version table."""
    lower = shared_backend.table_name
    names = [lower.capitalize(), lower.upper(), lower]
    for name in names:
        shared_backend.migrate(name)
    stores = [
        Store(shared_backend.url, table_name=name, clean_interval=None).start() for name in names
    ]
    try:
        stores[0].new_session("sid")
        assert stores[1].inc_sequence("sid", "view") == 1
        assert stores[2].inc_sequence("sid", "view") == 2
        assert [store.get_state().table_name for store in stores] == [lower] * 3
    finally:
        for store in stores:
            store.close()
    engine = sa.create_engine(shared_backend.direct_url)
    try:
        tables = {name.lower() for name in sa.inspect(engine).get_table_names()}
        mine = {name for name in tables if lower in name}
    finally:
        engine.dispose()
    assert mine == {
        lower,
        f"{lower}_history",
        f"{lower}_aggregates",
        f"{lower}_agg_browsers",
        f"{lower}_agg_values",
        f"alembic_version_{lower}",
    }


@pytest.mark.parametrize("option", ["session_max_age", "clean_interval"])
@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan, math.inf, -math.inf])
def test_non_positive_or_infinite_seconds_are_refused(option: str, value: float) -> None:
    """A max age or clean interval that is not a finite number above 0 is InvalidInput."""
    with pytest.raises(InvalidInput):
        Store("sqlite://", **{option: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("session_max_age", True),
        ("session_max_age", "3600"),
        ("session_max_age", None),
        ("clean_interval", True),
        ("clean_interval", "60"),
    ],
)
def test_non_numeric_seconds_raise_type_error(option: str, value: object) -> None:
    """A bool or a string for either, or None for the max age, is a wrong type: TypeError."""
    with pytest.raises(TypeError):
        Store("sqlite://", **{option: value})  # type: ignore[arg-type]


def test_small_fractional_seconds_are_accepted() -> None:
    """Any finite positive number of seconds, fractions included, is a valid option."""
    store = Store("sqlite://", session_max_age=0.5, clean_interval=0.25)
    state = store.get_state()
    assert (state.session_max_age, state.clean_interval) == (0.5, 0.25)


@pytest.mark.parametrize("durability", ["", "fast", "NORMAL ", "off"])
def test_unknown_durability_is_refused(durability: str) -> None:
    """durability other than "normal" or "full" raises InvalidInput."""
    with pytest.raises(InvalidInput):
        Store("sqlite://", durability=durability)


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_known_durability_is_accepted(tmp_path: Path, durability: str) -> None:
    """Both durability modes give a working file store."""
    with Store(f"sqlite:///{tmp_path}/d.db", durability=durability, clean_interval=None) as store:
        assert store.inc_sequence(store.new_session().session_id, "event") == 1


def test_options_are_checked_in_the_constructor() -> None:
    """A bad option fails when the Store is made, not later at start()."""
    with pytest.raises(SauceSQLError):
        Store("sqlite://", table_name="bad name")
    with pytest.raises(TypeError):
        Store("sqlite://", clock="not callable")  # type: ignore[arg-type]


# -- clocks ---------------------------------------------------------------------------


def test_naive_clock_is_refused(make_store: StoreFactory) -> None:
    """A clock returning naive datetimes makes writes and reads raise InvalidInput."""
    clock = FakeClock(datetime(2026, 1, 1, 12, 0))
    store = make_store(clock=clock)
    with pytest.raises(InvalidInput):
        store.new_session("sid")
    with pytest.raises(InvalidInput):
        store.revive_session(ReviveSession("sid"))
    with pytest.raises(InvalidInput):
        store.lookup_session("sid")
    clock.now = clock.now.replace(tzinfo=timezone.utc)
    assert not store.session_exists("sid")


def test_refused_write_on_existing_session_changes_nothing(store: Store, clock: FakeClock) -> None:
    """A refused assign_user or revival leaves the stored session exactly as it was."""
    written = store.new_session("sid", user_agent="ua", client_ip="192.0.2.1", user_id="u1")
    clock.advance(3600 + 1)
    with pytest.raises(InvalidInput):
        store.revive_session(ReviveSession("sid", client_ip="nope"))
    with pytest.raises(InvalidInput):
        store.maybe_revive_session(ReviveSession("sid", user_id=""))
    assert not store.session_exists("sid")
    clock.advance(-3601)
    assert store.lookup_session("sid") == written
    clock.advance(10)
    with pytest.raises(InvalidInput):
        store.assign_user("sid", "x" * 256)
    assert store.lookup_session("sid") == written
    assert written.expires_at == clock.now + timedelta(seconds=3590)


@pytest.mark.parametrize("seconds", [10**400, 1e-9, 5e-7])
def test_max_age_out_of_range_is_refused(seconds: float) -> None:
    """A max age too large for a float, or below a microsecond (which would make every
    session expire as it is born), is InvalidInput, not a bare OverflowError."""
    with pytest.raises(InvalidInput):
        Store("sqlite://", session_max_age=seconds)
    with pytest.raises(InvalidInput):
        Store("sqlite://", clean_interval=seconds)
