"""No error leaves the store bare: what the driver or datetime arithmetic raises becomes
InvalidInput (the caller's value cannot be stored) or StoreUnavailable, cause chained.

A PostgreSQL database whose encoding is not UTF8 cannot hold every character: psycopg
raises UnicodeEncodeError before sending the statement (or, with
``?client_encoding=utf8``, the server refuses the conversion). Aware datetimes near
the ends of datetime's range overflow when converted to UTC or when the max age is
added. Each is InvalidInput before anything is written, and the store goes on working.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from _support import FAR_FUTURE, admin
from conftest import PG_URL, FakeClock, StoreFactory, require_pgbouncer, require_postgres

from sauce_sql import InvalidInput, ReviveSession, Store

CJK_ID = "セッション-日本語"
EMOJI_AGENT = "Mozilla/5.0 🚀"

# Every operation, each given one value a LATIN1 database cannot hold.
UNSTORABLE: dict[str, Callable[[Store], object]] = {
    "new_session id": lambda s: s.new_session(CJK_ID),
    "new_session user agent": lambda s: s.new_session("sid", user_agent=EMOJI_AGENT),
    "new_session user": lambda s: s.new_session("sid", user_id="用户"),
    "lookup_session": lambda s: s.lookup_session(CJK_ID),
    "session_exists": lambda s: s.session_exists(CJK_ID),
    "inc_sequence": lambda s: s.inc_sequence(CJK_ID, "view"),
    "assign_user": lambda s: s.assign_user("latin", "用户"),
    "revive_session": lambda s: s.revive_session(ReviveSession("sid", EMOJI_AGENT)),
    "maybe_revive_session": lambda s: s.maybe_revive_session(ReviveSession(CJK_ID)),
    "maybe_revive_session user agent": lambda s: s.maybe_revive_session(
        ReviveSession("sid", EMOJI_AGENT)
    ),
}


@pytest.fixture(scope="module")
def latin1_database() -> Iterator[str]:
    """The URL of a LATIN1 database on the test server, made for this module."""
    require_postgres()
    name = f"sauce_latin1_{uuid.uuid4().hex[:10]}"
    with admin(PG_URL) as connection:
        connection.execute(
            f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    try:
        yield sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin(PG_URL) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    params=[
        "postgresql",
        "postgresql client_encoding=utf8",
        "pgbouncer_transaction",
        "pgbouncer_statement",
    ]
)
def latin1_store(request: pytest.FixtureRequest, latin1_database: str) -> Iterator[Store]:
    """A started store on its own table of the LATIN1 database, reached directly (with
    the client encoding the database's, or UTF8) or through PgBouncer."""
    table = f"t_{uuid.uuid4().hex[:12]}"
    # Migrated on the server itself: statement pooling refuses a migration.
    Store(latin1_database, table_name=table, clean_interval=None).start().close()
    mode: str = request.param
    url = latin1_database
    if mode.startswith("pgbouncer_"):
        url = require_pgbouncer_for(latin1_database, mode.removeprefix("pgbouncer_"))
    elif "utf8" in mode:
        url = (
            sa.make_url(url)
            .update_query_dict({"client_encoding": "utf8"})
            .render_as_string(hide_password=False)
        )
    store = Store(url, table_name=table, clean_interval=None).start()
    yield store
    store.close()


def require_pgbouncer_for(url: str, mode: str) -> str:
    """A PgBouncer in ``mode`` in front of the database at ``url``."""
    require_pgbouncer(mode)  # skips (or fails in CI) without PgBouncer
    from _pgbouncer import pgbouncer_url

    return pgbouncer_url(url, mode)


@pytest.mark.postgresql
@pytest.mark.parametrize("call", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_values_a_latin1_database_cannot_hold_are_invalid_input(
    latin1_store: Store, call: Callable[[Store], object]
) -> None:
    """A CJK id or user, an emoji user agent, in a write or a read, is InvalidInput with
    the driver's error chained; nothing is written and the store works on."""
    latin1_store.new_session("latin", user_agent="Mozilla/5.0 (été)")
    with pytest.raises(InvalidInput, match=r"LATIN1|latin-1") as caught:
        call(latin1_store)
    assert caught.value.__cause__ is not None
    assert len(str(caught.value)) < 300
    session = latin1_store.lookup_session("latin")
    assert session is not None
    assert session.user_id is None
    assert latin1_store.inc_sequence("latin", "view") == 1
    assert latin1_store.cleanup(FAR_FUTURE) == 1  # only "latin" was ever written


UTC = timezone.utc
WEST = timezone(timedelta(hours=-5))
EAST = timezone(timedelta(hours=5))
# Aware datetimes whose conversion to UTC, or whose expiry, is past datetime's range.
OVERFLOWING_CLOCKS = {
    "max UTC": datetime.max.replace(tzinfo=UTC),
    "max UTC less a minute": datetime.max.replace(tzinfo=UTC) - timedelta(minutes=1),
    "max west of UTC": datetime.max.replace(tzinfo=WEST),
    "min east of UTC": datetime.min.replace(tzinfo=EAST),
}


@pytest.mark.parametrize("moment", OVERFLOWING_CLOCKS.values(), ids=OVERFLOWING_CLOCKS.keys())
def test_clock_past_the_datetime_range_is_invalid_input(
    make_store: StoreFactory, moment: datetime
) -> None:
    """A clock whose time overflows in UTC or with the max age added makes every write
    InvalidInput, with the OverflowError chained and nothing written."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = make_store(clock=clock)
    store.new_session("sid")
    clock.now = moment
    writes: list[Callable[[], Any]] = [
        lambda: store.new_session("other"),
        lambda: store.inc_sequence("sid", "view"),
        lambda: store.assign_user("sid", "u1"),
        lambda: store.revive_session(ReviveSession("other")),
        lambda: store.maybe_revive_session(ReviveSession("other")),
    ]
    for write in writes:
        with pytest.raises(InvalidInput) as caught:
            write()
        assert isinstance(caught.value.__cause__, OverflowError)
    clock.now = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    assert store.inc_sequence("sid", "view") == 1
    assert store.cleanup(FAR_FUTURE) == 1


@pytest.mark.parametrize(
    "moment",
    [datetime.max.replace(tzinfo=WEST), datetime.min.replace(tzinfo=EAST)],
    ids=["max west of UTC", "min east of UTC"],
)
def test_cleanup_at_a_moment_past_the_datetime_range_is_invalid_input(
    store: Store, moment: datetime
) -> None:
    """cleanup(now) with a moment that cannot be written in UTC is InvalidInput, with
    the OverflowError chained, and deletes nothing."""
    store.new_session("sid")
    with pytest.raises(InvalidInput) as caught:
        store.cleanup(moment)
    assert isinstance(caught.value.__cause__, OverflowError)
    assert store.session_exists("sid")


@pytest.mark.parametrize(
    ("moment", "deleted"),
    [(datetime.max.replace(tzinfo=UTC), 1), (datetime.min.replace(tzinfo=UTC), 0)],
    ids=["max", "min"],
)
def test_cleanup_at_the_ends_of_the_datetime_range(
    store: Store, moment: datetime, deleted: int
) -> None:
    """cleanup(now) at datetime's first and last UTC moments works on every backend."""
    store.new_session("sid")
    assert store.cleanup(moment) == deleted


def test_reads_with_a_clock_at_the_end_of_time(make_store: StoreFactory) -> None:
    """Reads need no expiry: with the clock at datetime's last moment they work (and
    find every session expired)."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = make_store(clock=clock)
    store.new_session("sid")
    clock.now = datetime.max.replace(tzinfo=UTC)
    assert store.lookup_session("sid") is None
    assert not store.session_exists("sid")
