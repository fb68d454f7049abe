"""Bad input, fuzzed and listed: refused before the database is touched, or kept exactly.

Each argument is checked against the contract's own rule (written out here, not taken
from the library): ids are 1 to 255 characters with no control character, user agents
lose NUL and are cut at 512 characters, client IPs are stored in canonical form, and so
on. A refused value raises InvalidInput (TypeError for a wrong type) and writes
nothing; an accepted one comes back exactly as the contract says. SQL metacharacters in
values are data: they come back verbatim and the table stays intact.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _support import FAR_FUTURE
from conftest import PG_URL, START, Backend, FakeClock, StoreFactory, drop_tables
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from sauce_sql import (
    InvalidInput,
    ReviveSession,
    SequenceType,
    SessionNotFound,
    Store,
)

# Every category, lone surrogates included (hypothesis leaves them out by default).
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TRIED: Counter[str] = Counter()
# The boundary cases are pinned as explicit examples; shrinking adds only time.
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]

SQL_METACHARACTERS = [
    "'; DROP TABLE sessions; --",
    'x" OR "1"="1',
    "%s",
    "%(sid)s",
    "?",
    ":sid",
    "\\",
    "$1",
    "*/ SELECT 1 /*",
]


# -- the contract's rules -------------------------------------------------------------


def bad_characters(value: str) -> bool:
    """Whether ``value`` holds a control character (Unicode Cc) or a lone surrogate."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in value)


def id_is_valid(value: str) -> bool:
    """An id: 1 to 255 characters, none a control character (nor a lone surrogate,
    which no database encoding can hold)."""
    return 0 < len(value) <= 255 and not bad_characters(value)


def stored_user_agent(value: str) -> str:
    """NUL dropped, every other character kept (a lone surrogate, which cannot be
    stored, as U+FFFD), cut to 512 characters."""
    kept = "".join("\ufffd" if unicodedata.category(c) == "Cs" else c for c in value)
    return kept.replace("\x00", "")[:512]


def canonical_ip(value: str) -> str | None:
    """The address in canonical text (RFC 5952: IPv4-mapped as ::ffff:a.b.c.d), or None
    if it is not an address, or if its IPv6 zone id is not an interface name or number
    (letters, digits, ".", "_", "-", at most 15 characters)."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    zone = getattr(address, "scope_id", None)
    if zone is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,15}", zone, re.ASCII):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}", re.ASCII)


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture
def empty_store(store: Store) -> Callable[[], Store]:
    """The backend's store, emptied at each call (each hypothesis example starts empty)."""

    def empty() -> Store:
        store.cleanup(FAR_FUTURE)
        return store

    return empty


def assert_refused(
    store: Store | None, call: Callable[[], object], what: str, *errors: type[Exception]
) -> None:
    """``call`` raises one of ``errors`` (InvalidInput by default) and writes nothing."""
    with pytest.raises(errors or (InvalidInput,)):
        call()
    TRIED[what] += 1
    if store is not None:
        assert store.cleanup(FAR_FUTURE) == 0, f"a refused {what} left a row"


def every_id_use(store: Store, sid: Any) -> list[Callable[[], object]]:
    """Every public operation that takes a session id, called with ``sid``."""
    revive = ReviveSession(sid)
    return [
        lambda: store.new_session(sid),
        lambda: store.lookup_session(sid),
        lambda: store.session_exists(sid),
        lambda: store.inc_sequence(sid, "view"),
        lambda: store.assign_user(sid, "u"),
        lambda: store.revive_session(revive),
        lambda: store.maybe_revive_session(revive),
    ]


@pytest.fixture(autouse=True, scope="module")
def report_figures() -> Iterator[None]:
    """Print how many bad inputs each kind of argument was tried with."""
    yield
    print(f"FIGURES bad inputs tried: {sum(TRIED.values())} {dict(sorted(TRIED.items()))}")


# -- session and user ids --------------------------------------------------------------

EXPLICIT_IDS = [
    "",
    "a" * 256,
    "\u00e9" * 256,
    "\x00",
    "a\x00b",
    "\n",
    "tab\there",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\ud800",
    "a\udfffb",
    "a" * 255,
    "\u00e9" * 255,
    "\U0001f600" * 255,
    " ",
    "\u2028",
    "\u200b",
    "\ufeff",
    *SQL_METACHARACTERS,
]


@FUZZ
@given(sid=st.one_of(ANY_TEXT, st.text(min_size=250, max_size=260), st.sampled_from(EXPLICIT_IDS)))
def test_session_ids(empty_store: Callable[[], Store], sid: str) -> None:
    """A session id is kept exactly if it has 1 to 255 characters and no control
    character; otherwise every operation refuses it and nothing is written."""
    store = empty_store()
    if not id_is_valid(sid):
        for call in every_id_use(store, sid):
            assert_refused(store, call, "session_id")
        return
    assert store.new_session(sid).session_id == sid
    found = store.lookup_session(sid)
    assert found is not None
    assert found.session_id == sid
    assert store.inc_sequence(sid, "view") == 1
    assert store.revive_session(ReviveSession(sid)).view_sequence == 1


@pytest.mark.parametrize("sid", [None, 7, 1.5, b"bytes", ["list"], object()], ids=repr)
def test_session_ids_of_wrong_type(store: Store, sid: Any) -> None:
    """A session id that is not a str is a TypeError for every operation (None means
    a new random id only to new_session)."""
    calls = every_id_use(store, sid)
    if sid is None:
        calls = calls[1:]
    for call in calls:
        assert_refused(store, call, "session_id", TypeError)


@FUZZ
@given(uid=st.one_of(ANY_TEXT, st.sampled_from(EXPLICIT_IDS)))
def test_user_ids(empty_store: Callable[[], Store], uid: str) -> None:
    """A user id follows the session id's rule, in new_session, assign_user and revival."""
    store = empty_store()
    if not id_is_valid(uid):
        assert_refused(store, lambda: store.new_session("s", user_id=uid), "user_id")
        store.new_session("s")
        assert_refused(None, lambda: store.assign_user("s", uid), "user_id")
        revive = ReviveSession("s", user_id=uid)
        assert_refused(None, lambda: store.revive_session(revive), "user_id")
        assert_refused(None, lambda: store.maybe_revive_session(revive), "user_id")
        found = store.lookup_session("s")
        assert found is not None
        assert found.user_id is None
        assert found.last_modified == found.created_at  # nothing was written to it
        return
    assert store.new_session("s", user_id=uid).user_id == uid
    store.assign_user("s", None)
    store.assign_user("s", uid)
    found = store.lookup_session("s")
    assert found is not None
    assert found.user_id == uid
    assert store.revive_session(ReviveSession("r", user_id=uid)).user_id == uid


# -- user agents -----------------------------------------------------------------------

EXPLICIT_USER_AGENTS = [
    "\ud800",
    "Mozilla\udfff/5.0",
    "\x00" * 1000,
    "a\x00" * 600,
    "x" * 1_000_000,
    "\u00e9" * 600,
    "\U0001f600" * 600,
    "\r\nX-Injected: yes",
    "\x1b[31mred",
    *SQL_METACHARACTERS,
]


@FUZZ
@given(
    ua=st.one_of(
        ANY_TEXT,
        st.text(min_size=500, max_size=700),
        st.sampled_from(EXPLICIT_USER_AGENTS),
    )
)
@example(ua="y" * 10_000_000)
def test_user_agents(empty_store: Callable[[], Store], ua: str) -> None:
    """A user agent is never refused: NUL is dropped, it is cut to 512 characters and
    every other character is kept (a lone surrogate as U+FFFD)."""
    store = empty_store()
    expected = stored_user_agent(ua)
    assert store.new_session("s", user_agent=ua).user_agent == expected
    found = store.lookup_session("s")
    assert found is not None
    assert found.user_agent == expected
    revived = store.revive_session(ReviveSession("r", user_agent=ua))
    assert revived.user_agent == expected


@pytest.mark.parametrize("ua", [None, 5, b"Mozilla", ["Mozilla"]], ids=repr)
def test_user_agents_of_wrong_type(store: Store, ua: Any) -> None:
    """A user agent that is not a str is a TypeError, and nothing is written."""
    assert_refused(store, lambda: store.new_session("s", user_agent=ua), "user_agent", TypeError)
    revive = ReviveSession("s", user_agent=ua)
    assert_refused(store, lambda: store.revive_session(revive), "user_agent", TypeError)


# -- client IPs ------------------------------------------------------------------------

EXPLICIT_IPS = [
    "256.1.1.1",
    "1.2.3",
    "1.2.3.4.5",
    "01.2.3.4",
    " 192.0.2.1",
    "192.0.2.1 ",
    "192.0.2.1\x00",
    "192.0.2.1/24",
    "::g",
    "1:2:3:4:5:6:7:8:9",
    "fe80::1%",
    "fe80::1%" + "x" * 100,
    "localhost",
    "'; DROP TABLE sessions; --",
    "2001:DB8:0:0:0:0:0:1",
    "2001:0db8::0001",
    "::FFFF:192.0.2.1",
    "::1",
    "0.0.0.0",
    "fe80::1%eth0",
    "fe80::1%<img src=x onerror=alert(1)>",
    "fe80::1%br-1a2b3c4d5e6f",
    "fe80::1%br-1a2b3c4d5e6f7",
]


def ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address, form: str) -> str:
    """One of the ways an address may be written."""
    if form == "exploded":
        return address.exploded
    if form == "upper":
        return str(address).upper()
    return str(address)


@FUZZ
@given(
    ip=st.one_of(
        st.builds(ip_text, st.ip_addresses(), st.sampled_from(["plain", "exploded", "upper"])),
        ANY_TEXT,
        st.sampled_from(EXPLICIT_IPS),
    )
)
def test_client_ips(empty_store: Callable[[], Store], ip: str) -> None:
    """An IP address is stored in canonical form; anything else is refused; "" is None."""
    store = empty_store()
    expected = None if ip == "" else canonical_ip(ip)
    if ip != "" and (expected is None or len(expected) > 64 or bad_characters(ip)):
        assert_refused(store, lambda: store.new_session("s", client_ip=ip), "client_ip")
        revive = ReviveSession("s", client_ip=ip)
        assert_refused(store, lambda: store.maybe_revive_session(revive), "client_ip")
        return
    assert store.new_session("s", client_ip=ip).client_ip == expected
    found = store.lookup_session("s")
    assert found is not None
    assert found.client_ip == expected


def test_client_ip_scope_with_control_characters(store: Store) -> None:
    """An IPv6 zone id holding NUL or another control character is refused, like such
    characters in ids (Python's ipaddress parses it; no database should get it)."""
    for ip in ["fe80::1%\x00", "fe80::1%eth0\x00", "fe80::1%\n", "fe80::1%\ud800"]:
        assert_refused(store, functools.partial(store.new_session, "s", client_ip=ip), "client_ip")


@pytest.mark.parametrize("ip", [3232235777, b"192.0.2.1", ["192.0.2.1"], 1.5], ids=repr)
def test_client_ips_of_wrong_type(store: Store, ip: Any) -> None:
    """A client IP that is neither a str, an ipaddress object nor None is a TypeError."""
    assert_refused(store, lambda: store.new_session("s", client_ip=ip), "client_ip", TypeError)


def test_client_ip_objects(store: Store) -> None:
    """ipaddress objects are taken and stored in canonical form."""
    address = ipaddress.ip_address("2001:db8::0:1")
    session = store.new_session("s", client_ip=address)  # type: ignore[arg-type]
    assert session.client_ip == "2001:db8::1"


# -- sequence types --------------------------------------------------------------------

EXPLICIT_TYPES: list[Any] = [
    "View",
    "VIEW",
    " view",
    "view ",
    "views",
    "",
    "view\x00",
    "event; DROP TABLE sessions",
    "view_sequence",
    "SequenceType.VIEW",
    None,
    0,
    1,
    b"view",
    ["view"],
]


@FUZZ
@given(kind=st.one_of(ANY_TEXT, st.sampled_from(EXPLICIT_TYPES)))
def test_sequence_types(empty_store: Callable[[], Store], kind: Any) -> None:
    """Only "view", "event" and their SequenceType members count; anything else is
    InvalidInput (TypeError allowed for a non-str) and changes nothing."""
    store = empty_store()
    before = store.new_session("s")
    if kind in ("view", "event"):
        assert store.inc_sequence("s", kind) == 1
        return
    errors = (InvalidInput,) if isinstance(kind, str) else (InvalidInput, TypeError)
    with pytest.raises(errors):
        store.inc_sequence("s", kind)
    # Checked before the session is looked for: a missing session changes nothing.
    with pytest.raises(errors):
        store.inc_sequence("missing", kind)
    TRIED["sequence type"] += 1
    assert store.lookup_session("s") == before


def test_sequence_type_members(store: Store) -> None:
    """SequenceType members count like their values; an unknown session is
    SessionNotFound once the type is valid."""
    store.new_session("s")
    assert store.inc_sequence("s", SequenceType.VIEW) == 1
    assert store.inc_sequence("s", SequenceType.EVENT) == 1
    with pytest.raises(SessionNotFound):
        store.inc_sequence("missing", SequenceType.VIEW)


# -- table names -----------------------------------------------------------------------

BAD_TABLE_NAMES = [
    "",
    "sessions; DROP TABLE sessions",
    "sessions--",
    'a"b',
    "a'b",
    "a b",
    "a-b",
    "a.b",
    "public.sessions",
    "1sessions",
    "a" * 41,
    "s\u00e9ssions",
    "\u0430dmin",  # Cyrillic a
    "sessions\x00",
    "sessions\n",
    "Robert'); DROP TABLE Students;--",
    "sessions/*",
    "`sessions`",
    "[sessions]",
    "\uff53essions",  # fullwidth s
    "\U0001d42c\U0001d41e\U0001d42c",  # mathematical bold letters
]


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(ANY_TEXT, st.from_regex(TABLE_NAME, fullmatch=True)))
@example(name="_")
def test_table_names_fuzzed(name: str) -> None:
    """A table name is taken, in lower case, when it is letters, digits and
    underscores, not starting with a digit, at most 40 characters (ASCII); otherwise
    InvalidInput."""
    if TABLE_NAME.fullmatch(name):
        assert Store("sqlite://", table_name=name).get_state().table_name == name.lower()
    else:
        assert_refused(None, lambda: Store("sqlite://", table_name=name), "table_name")


@pytest.mark.parametrize("name", BAD_TABLE_NAMES)
def test_table_names_listed(name: str) -> None:
    """Injection attempts and look-alike letters in a table name are InvalidInput."""
    assert_refused(None, lambda: Store("sqlite://", table_name=name), "table_name")


@pytest.mark.parametrize("name", [None, 5, b"sessions"], ids=repr)
def test_table_names_of_wrong_type(name: Any) -> None:
    """A table name that is not a str is a TypeError."""
    assert_refused(None, lambda: Store("sqlite://", table_name=name), "table_name", TypeError)


@pytest.mark.parametrize("name", ["select", "user", "order", "Mixed_Case", "_", "a" * 40])
def test_valid_table_names_work(backend: Backend, name: str) -> None:
    """Every name the rule allows works, SQL keywords and mixed case included."""
    if backend.dialect == "postgresql":
        # Keywords cannot be made unique per test, so clear the shared server first
        # (of the table under its lower-case name, which the store uses).
        drop_tables(PG_URL, name.lower())
    backend.migrate(name)
    try:
        with Store(backend.url, table_name=name, clean_interval=None) as store:
            store.new_session("s")
            assert store.inc_sequence("s", "view") == 1
            assert store.cleanup(FAR_FUTURE) == 1
    finally:
        if backend.dialect == "postgresql":
            drop_tables(PG_URL, name.lower())


# -- max ages, intervals and other options ---------------------------------------------

BAD_SECONDS: list[Any] = [0, 0.0, -0.0, -1, -1e-9, math.nan, math.inf, -math.inf, 1e-400]
WRONG_TYPE_SECONDS: list[Any] = ["3600", b"1", True, False, Decimal("10"), [1], None]


@pytest.mark.parametrize("value", BAD_SECONDS, ids=repr)
@pytest.mark.parametrize("option", ["session_max_age", "clean_interval"])
def test_bad_seconds(option: str, value: Any) -> None:
    """A non-positive or non-finite max age or clean interval is InvalidInput."""
    assert_refused(None, lambda: Store("sqlite://", **{option: value}), option)


@pytest.mark.parametrize("value", WRONG_TYPE_SECONDS, ids=repr)
@pytest.mark.parametrize("option", ["session_max_age", "clean_interval"])
def test_seconds_of_wrong_type(option: str, value: Any) -> None:
    """A max age or interval that is not a number is a TypeError (None: no cleaner)."""
    if option == "clean_interval" and value is None:
        assert Store("sqlite://", clean_interval=None).get_state().clean_interval is None
        return
    refused = (TypeError, InvalidInput) if isinstance(value, Decimal) else (TypeError,)
    assert_refused(None, lambda: Store("sqlite://", **{option: value}), option, *refused)


@settings(max_examples=60, deadline=None, phases=NO_SHRINK)
@given(
    age=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.sampled_from([1e9, 1e10, 1e13, 1e300, 2**63]),
    )
)
def test_session_max_age_fuzzed(age: float) -> None:
    """Any finite positive max age either works (new sessions expire that far ahead) or
    is InvalidInput in the constructor: never a late OverflowError."""
    valid = math.isfinite(age) and age > 0
    if not valid:
        assert_refused(None, lambda: Store("sqlite://", session_max_age=age), "session_max_age")
        return
    try:
        store = Store("sqlite://", session_max_age=age, clean_interval=None, clock=FakeClock())
    except InvalidInput:
        # Refusing an age too large to add to a date is fine, a century is not; nor is
        # one below a microsecond, which would make every session expire as it is born.
        assert age > 100 * 365 * 86400 or age < 1e-6
        return
    with store:
        session = store.new_session("s")
        assert session.expires_at > START
        assert store.inc_sequence("s", "event") == 1


@settings(max_examples=30, deadline=None, phases=NO_SHRINK)
@given(interval=st.one_of(st.floats(min_value=1e-3), st.sampled_from([1e9, 1e13, 1e300])))
@example(interval=9223372037.0)  # just past threading.TIMEOUT_MAX
def test_clean_interval_fuzzed(interval: float) -> None:
    """Any finite positive clean interval either gives a running cleaner or is
    InvalidInput in the constructor: never a cleaner thread that dies on it."""
    if not math.isfinite(interval):
        return
    try:
        store = Store("sqlite://", clean_interval=interval)
    except InvalidInput:
        assert interval > 86400 * 365
        return
    with store:
        store.new_session("s")
        for _ in range(5):  # a thread that cannot wait that long dies at once
            assert store.get_state().cleaner_running
            time.sleep(0.01)


def test_other_bad_options(tmp_path: Path) -> None:
    """Bad durability, clock and engine options are refused in the constructor."""
    durabilities: list[Any] = ["fast", "NORMAL", "", None, 1]
    for durability in durabilities:
        assert_refused(
            None, functools.partial(Store, "sqlite://", durability=durability), "durability"
        )
    assert_refused(None, lambda: Store("sqlite://", clock="now"), "clock", TypeError)  # type: ignore[arg-type]
    assert_refused(None, lambda: Store(engine="sqlite://"), "engine", TypeError)  # type: ignore[arg-type]
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.db'}")
    try:
        assert_refused(None, lambda: Store("sqlite://", engine=engine), "url and engine")
    finally:
        engine.dispose()


def test_naive_and_wrong_datetimes(store: Store, make_store: StoreFactory) -> None:
    """A naive datetime from the clock or given to cleanup is InvalidInput, a non-datetime
    a TypeError, and nothing is written."""
    store.new_session("kept")
    naive = make_store(clock=lambda: datetime(2026, 1, 1, 12, 0))
    for call in [
        lambda: naive.new_session("n"),
        lambda: naive.inc_sequence("kept", "view"),
        lambda: naive.revive_session(ReviveSession("n")),
    ]:
        assert_refused(None, call, "clock datetime")
    wrong = make_store(clock=lambda: "2026-01-01")
    assert_refused(None, lambda: wrong.new_session("w"), "clock datetime", TypeError)
    assert_refused(None, lambda: store.cleanup(datetime(2030, 1, 1)), "cleanup now")
    assert_refused(None, lambda: store.cleanup("2030-01-01"), "cleanup now", TypeError)  # type: ignore[arg-type]
    assert not store.session_exists("n")
    assert not store.session_exists("w")
    kept = store.lookup_session("kept")
    assert kept is not None
    assert kept.view_sequence == 0
    # An aware datetime in another zone is the same moment.
    assert store.cleanup(datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=5)))) == 1


# -- URLs --------------------------------------------------------------------------------

BAD_URLS: list[Any] = [
    "",
    "not a url",
    "://",
    "sqlite:/",
    "sqlite:",
    "http://example.com",
    "mysql://user@localhost/db",
    "oracle://user@localhost/db",
    "postgresql+nodriver://user@localhost/db",
    "sqlite+nodriver:///x.db",
    "postgresql://user@[::1/db",
    "postgresql://user@host:port/db",
    "'; DROP TABLE sessions; --",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_malformed_urls(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL that cannot be parsed, or names a database sauce_sql does not serve, is
    InvalidInput in the constructor, and no file is created."""
    monkeypatch.chdir(tmp_path)
    assert_refused(None, lambda: Store(url), "url")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", [42, b"sqlite://", ["sqlite://"], 1.5], ids=repr)
def test_urls_of_wrong_type(url: Any) -> None:
    """A URL that is neither a str nor a sqlalchemy.URL is a TypeError."""
    assert_refused(None, lambda: Store(url), "url", TypeError)


@settings(max_examples=200, deadline=None)
@given(url=ANY_TEXT)
@example(url="postgresql://u@h:99999999999999999999/db")
def test_urls_fuzzed(url: str) -> None:
    """Whatever the text, the constructor either accepts it or raises InvalidInput."""
    try:
        store = Store(url, clean_interval=None)
    except InvalidInput:
        TRIED["url"] += 1
    else:
        store.close()


# -- revive dicts ------------------------------------------------------------------------


@FUZZ
@given(
    data=st.dictionaries(
        st.sampled_from(["session_id", "user_agent", "user_id", "client_ip", "sid", "extra"]),
        st.one_of(st.none(), ANY_TEXT, st.integers(), st.sampled_from(EXPLICIT_IDS)),
    )
)
def test_revive_dicts(empty_store: Callable[[], Store], data: dict[str, Any]) -> None:
    """A revive dict from a client is refused with InvalidInput (so an app catching
    SauceSQLError answers it as bad input) or revives exactly what it says, nothing
    coerced; it never reaches the database unchecked."""
    store = empty_store()
    try:
        revive = ReviveSession.from_dict(data)
        session = store.revive_session(revive)
    except InvalidInput:
        TRIED["revive dict"] += 1
        assert store.cleanup(FAR_FUTURE) == 0
        return
    assert session.session_id == data["session_id"]
    assert session.user_agent == stored_user_agent(data.get("user_agent", ""))
    assert session.user_id == data.get("user_id")
    assert session.client_ip == (canonical_ip(data["client_ip"]) if data.get("client_ip") else None)


def test_sql_metacharacters_are_data(store: Store) -> None:
    """Values full of SQL metacharacters are stored verbatim and touch no other row."""
    for n, text in enumerate(SQL_METACHARACTERS):
        store.new_session(text, user_agent=text, user_id=text)
        store.inc_sequence(text, "view")
        found = store.lookup_session(text)
        assert found is not None
        assert (found.session_id, found.user_agent, found.user_id) == (text, text, text)
        assert store.cleanup(FAR_FUTURE) == 1, n
