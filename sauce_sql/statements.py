"""Every statement the store runs, built as SQLAlchemy constructs. No I/O.

This is the one module that switches on the dialect. Each builder returns a statement
whose runtime values are named bind parameters:

``sid``      the session id              ``now``      the operation's one clock reading
``expires``  ``now + session_max_age``   ``ua``/``ip``/``uid``  user agent, client IP, user
``batch``    rows per cleanup batch       ``bound_at``/``bound_id``  where a batch ends

Each operation is one statement, atomic on its own: counters are ``UPDATE ... RETURNING``,
creation and revival are the dialect's own upsert (``INSERT ... ON CONFLICT DO UPDATE``),
so there is no select-then-write race to lose.

On PostgreSQL an increment or ``assign_user`` moves ``expires_at`` (an indexed column)
only when it is at least :func:`expiry_resolution` short of ``expires``: an update that
changes no indexed column can be a HOT update (the new row version on the same page, no
new index entries), so steady counting neither grows the index nor leaves dead entries
for vacuum. SQLite rewrites the row in its B-tree either way and keeps expiry exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Delete,
    Insert,
    Integer,
    Interval,
    Select,
    String,
    Table,
    Update,
    any_,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from sauce_sql.schema import UTCDateTime

__all__ = [
    "RESOLUTION_CAP",
    "RESOLUTION_SHARE",
    "SUPPORTED_DIALECTS",
    "SessionStatements",
    "build",
    "expiry_resolution",
]

SUPPORTED_DIALECTS = ("postgresql", "sqlite")
#: On PostgreSQL, expires_at may lag ``now + session_max_age`` by up to
#: ``min(session_max_age / RESOLUTION_SHARE, RESOLUTION_CAP)`` after an increment or
#: assign_user (see :func:`expiry_resolution`).
RESOLUTION_SHARE = 20
RESOLUTION_CAP = timedelta(minutes=5)

_now = bindparam("now", type_=UTCDateTime())
_expires = bindparam("expires", type_=UTCDateTime())
_sid = bindparam("sid", type_=String())


@dataclass(frozen=True, slots=True)
class SessionStatements:
    """The statements of one table on one dialect, and the parameters each takes."""

    select_live: Select[Any]
    exists_live: Select[Any]
    increment_view: Update
    increment_event: Update
    assign_user: Update
    create: Insert
    revive: Insert
    revive_if_expired: Insert
    delete_expired_batch: Delete
    expired_bound: Select[Any]
    delete_expired_upto: Delete

    #: Runtime parameter names, per statement attribute.
    PARAMETERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "select_live": ("sid", "now"),
        "exists_live": ("sid", "now"),
        "increment_view": ("sid", "now", "expires"),
        "increment_event": ("sid", "now", "expires"),
        "assign_user": ("sid", "now", "expires", "uid"),
        "create": ("sid", "now", "expires", "ua", "ip", "uid"),
        "revive": ("sid", "now", "expires", "ua", "ip", "uid"),
        "revive_if_expired": ("sid", "now", "expires", "ua", "ip", "uid"),
        "delete_expired_batch": ("now", "batch"),
        "expired_bound": ("now", "batch"),
        "delete_expired_upto": ("bound_at", "bound_id"),
    }


def expiry_resolution(session_max_age: timedelta) -> timedelta:
    """How far short of ``now + session_max_age`` a PostgreSQL increment or
    ``assign_user`` may leave ``expires_at``: 5% of the max age, at most 5 minutes.

    >>> expiry_resolution(timedelta(hours=1))
    datetime.timedelta(seconds=180)
    """
    return min(session_max_age / RESOLUTION_SHARE, RESOLUTION_CAP)


def _live(table: Table) -> ColumnElement[bool]:
    return (table.c.session_id == _sid) & (table.c.expires_at > _now)


def _sliding_expiry(table: Table, dialect: str, *, exact: bool) -> ColumnElement[Any]:
    """The ``expires_at`` an increment or assign_user writes.

    On PostgreSQL the stored value is kept while it lies within the resolution below
    ``expires`` (and not past it), so the row's indexed columns are unchanged and the
    update can be HOT. The resolution is computed from the statement's own ``now`` and
    ``expires`` (their difference is the store's max age), so the statement takes the
    same parameters as the exact one and a store of another max age on the same table
    gets its own resolution.
    """
    if exact or dialect == "sqlite":
        return _expires
    stored = table.c.expires_at
    max_age = (_expires - _now).self_group()
    share = max_age.op("/")(literal_column(str(RESOLUTION_SHARE), Integer()))
    cap = literal_column(f"interval '{RESOLUTION_CAP.total_seconds():.0f} seconds'", Interval())
    resolution = func.least(share, cap, type_=Interval())
    fresh_enough = (stored >= _expires - resolution) & (stored <= _expires)
    return case((fresh_enough, stored), else_=_expires)


def _increment(table: Table, column: str, expiry: ColumnElement[Any]) -> Update:
    counter = table.c[column]
    return (
        update(table)
        .where(_live(table))
        .values({counter: counter + 1, table.c.last_modified: _now, table.c.expires_at: expiry})
        .returning(counter)
    )


def _insert(table: Table, dialect: str) -> Any:
    """``INSERT`` of a fresh session, from the dialect that knows ``ON CONFLICT``."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).values(
        session_id=_sid,
        user_agent=bindparam("ua", type_=String()),
        client_ip=bindparam("ip", type_=String()),
        user_id=bindparam("uid", type_=String()),
        view_sequence=literal_column("0", BigInteger()),
        event_sequence=literal_column("0", BigInteger()),
        created_at=_now,
        last_modified=_now,
        expires_at=_expires,
    )


def _create(table: Table, dialect: str) -> Insert:
    """A new session; an expired row under the id is replaced, a live one left alone.

    When a live row holds the id the ``WHERE`` of the ``DO UPDATE`` fails, nothing is
    written and ``RETURNING`` yields no row: that is how the store sees SessionExists.
    """
    insert = _insert(table, dialect)
    fresh = {c.name: insert.excluded[c.name] for c in table.c if c.name != "session_id"}
    return insert.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[table.c.session_id],
        set_=fresh,
        where=table.c.expires_at <= _now,
    ).returning(*table.c)


def _revive(table: Table, dialect: str, *, only_if_expired: bool) -> Insert:
    """Bring a session back under its id, keeping counters and created_at of any row."""
    insert = _insert(table, dialect)
    excluded = insert.excluded
    return insert.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[table.c.session_id],
        set_={
            "user_agent": excluded.user_agent,
            "client_ip": excluded.client_ip,
            "user_id": func.coalesce(excluded.user_id, table.c.user_id),
            "last_modified": excluded.last_modified,
            "expires_at": excluded.expires_at,
        },
        where=(table.c.expires_at <= _now) if only_if_expired else None,
    ).returning(*table.c)


def _delete_expired_batch(table: Table, dialect: str) -> Delete:
    """Delete at most ``batch`` expired rows, found through the expires_at index.

    The outer ``expires_at <= now`` is re-checked on the row being deleted, so a row
    revived after the inner select picked it is kept (PostgreSQL re-evaluates the
    condition on the updated row version).
    """
    expired = table.c.expires_at <= _now
    batch = bindparam("batch", type_=BigInteger())
    if dialect == "postgresql":
        # By physical row address: PostgreSQL plans `session_id IN (SELECT ... LIMIT)`
        # as a scan of the whole table per batch.
        ctid: ColumnElement[Any] = literal_column("ctid")
        victims = select(ctid).where(expired).limit(batch).scalar_subquery()
        return delete(table).where(ctid == any_(func.array(victims)), expired)
    victims = select(table.c.session_id).where(expired).limit(batch).scalar_subquery()
    return delete(table).where(table.c.session_id.in_(victims), expired)


def _expired_bound(table: Table) -> Select[Any]:
    """The (expires_at, session_id) of the ``batch``-th oldest expired row, if any.

    With :func:`_delete_expired_upto` this deletes a batch as a range of the
    expires_at index (which holds session_id too, the key of a WITHOUT ROWID table),
    the way one big DELETE would; on SQLite, picking ids first and deleting each by
    key costs twice as much per row. The pair, not the time alone, bounds the range,
    so that many rows expiring at one moment still go in bounded batches.
    """
    return (
        select(table.c.expires_at, table.c.session_id)
        .where(table.c.expires_at <= _now)
        .order_by(table.c.expires_at, table.c.session_id)
        .limit(literal_column("1"))
        .offset(bindparam("batch", type_=BigInteger()))
    )


def _delete_expired_upto(table: Table) -> Delete:
    """Delete the expired rows up to a bound from :func:`_expired_bound`.

    The bound was read from the table (raw, as stored), so it is never past the
    cleanup's now and a row revived since (expiring after now) stays. Only the
    row-value comparison, no other condition on expires_at: SQLite then scans
    exactly the range of the index.
    """
    bound = tuple_(bindparam("bound_at", type_=String()), bindparam("bound_id", type_=String()))
    return delete(table).where(tuple_(table.c.expires_at, table.c.session_id) <= bound)


def build(table: Table, dialect: str, *, lean_expiry: bool = False) -> SessionStatements:
    """All statements for ``table`` on ``dialect`` (one of :data:`SUPPORTED_DIALECTS`).

    Every write sets ``expires_at`` to ``expires``, unless ``lean_expiry`` (the store's
    option of that name) has increments and assign_user on PostgreSQL keep a stored
    expiry within the resolution (HOT updates).
    """
    if dialect not in SUPPORTED_DIALECTS:
        raise ValueError(f"unsupported dialect {dialect!r}")
    expiry = _sliding_expiry(table, dialect, exact=not lean_expiry)
    return SessionStatements(
        select_live=select(*table.c).where(_live(table)),
        exists_live=select(literal_column("1")).select_from(table).where(_live(table)),
        increment_view=_increment(table, "view_sequence", expiry),
        increment_event=_increment(table, "event_sequence", expiry),
        assign_user=(
            update(table)
            .where(_live(table))
            .values(
                user_id=bindparam("uid", type_=String()),
                last_modified=_now,
                expires_at=expiry,
            )
            .returning(table.c.session_id)
        ),
        create=_create(table, dialect),
        revive=_revive(table, dialect, only_if_expired=False),
        revive_if_expired=_revive(table, dialect, only_if_expired=True),
        delete_expired_batch=_delete_expired_batch(table, dialect),
        expired_bound=_expired_bound(table),
        delete_expired_upto=_delete_expired_upto(table),
    )


def utc_day(column: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """``YYYY-MM-DD`` of a stored time, in UTC, for grouping by day."""
    if dialect == "postgresql":
        utc = func.timezone("UTC", column)
        return func.to_char(utc, "YYYY-MM-DD")
    # SQLite keeps UTC text that starts with the date.
    return func.substr(column, 1, 10)
