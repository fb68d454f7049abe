"""Every statement the store runs, built as SQLAlchemy constructs. No I/O.

What differs between the databases (the upsert's ``INSERT``, the batch delete, lean
expiry) comes from the table's backend (:mod:`sauce_sql.backends`), looked up once
per build. Each builder returns a statement whose runtime values are named bind
parameters:

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
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Delete,
    Insert,
    Select,
    String,
    Table,
    Update,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    tuple_,
    update,
)

from sauce_sql.backends import BACKENDS, Backend, backend_for
from sauce_sql.backends.postgresql.dialect import (
    RESOLUTION_CAP,
    RESOLUTION_SHARE,
    expiry_resolution,
)
from sauce_sql.schema import UTCDateTime

__all__ = [
    "RESOLUTION_CAP",
    "RESOLUTION_SHARE",
    "SUPPORTED_DIALECTS",
    "SessionStatements",
    "build",
    "expiry_resolution",
]

#: The dialects the statements are built for (:data:`sauce_sql.backends.BACKENDS`).
SUPPORTED_DIALECTS = tuple(sorted(BACKENDS))

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


def _live(table: Table) -> ColumnElement[bool]:
    return (table.c.session_id == _sid) & (table.c.expires_at > _now)


def _sliding_expiry(table: Table, backend: Backend, *, exact: bool) -> ColumnElement[Any]:
    """The ``expires_at`` an increment or assign_user writes: ``expires``, or where the
    backend has a lean expiry (PostgreSQL's HOT updates) and ``exact`` is not asked,
    that one (see :func:`sauce_sql.backends.postgresql.dialect.lean_expiry`)."""
    if exact or backend.lean_expiry is None:
        return _expires
    return backend.lean_expiry(table.c.expires_at, _now, _expires)


def _increment(table: Table, column: str, expiry: ColumnElement[Any]) -> Update:
    counter = table.c[column]
    return (
        update(table)
        .where(_live(table))
        .values({counter: counter + 1, table.c.last_modified: _now, table.c.expires_at: expiry})
        .returning(counter)
    )


def _insert(table: Table, backend: Backend) -> Any:
    """``INSERT`` of a fresh session, from the dialect that knows ``ON CONFLICT``."""
    return backend.insert(table).values(
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


def _create(table: Table, backend: Backend) -> Insert:
    """A new session; an expired row under the id is replaced, a live one left alone.

    When a live row holds the id the ``WHERE`` of the ``DO UPDATE`` fails, nothing is
    written and ``RETURNING`` yields no row: that is how the store sees SessionExists.
    """
    insert = _insert(table, backend)
    fresh = {c.name: insert.excluded[c.name] for c in table.c if c.name != "session_id"}
    return insert.on_conflict_do_update(  # type: ignore[no-any-return]
        index_elements=[table.c.session_id],
        set_=fresh,
        where=table.c.expires_at <= _now,
    ).returning(*table.c)


def _revive(table: Table, backend: Backend, *, only_if_expired: bool) -> Insert:
    """Bring a session back under its id, keeping counters and created_at of any row."""
    insert = _insert(table, backend)
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


def _delete_expired_batch(table: Table, backend: Backend) -> Delete:
    """Delete at most ``batch`` expired rows, found through the expires_at index.

    The outer ``expires_at <= now`` is re-checked on the row being deleted, so a row
    revived after the inner select picked it is kept (PostgreSQL re-evaluates the
    condition on the updated row version). How the batch is picked is the backend's.
    """
    expired = table.c.expires_at <= _now
    return backend.delete_expired_batch(table, expired, bindparam("batch", type_=BigInteger()))


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
    """All statements for ``table`` on ``dialect`` (one of :data:`SUPPORTED_DIALECTS`;
    InvalidInput for any other).

    Every write sets ``expires_at`` to ``expires``, unless ``lean_expiry`` (the store's
    option of that name) has increments and assign_user on PostgreSQL keep a stored
    expiry within the resolution (HOT updates).
    """
    backend = backend_for(dialect)
    expiry = _sliding_expiry(table, backend, exact=not lean_expiry)
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
        create=_create(table, backend),
        revive=_revive(table, backend, only_if_expired=False),
        revive_if_expired=_revive(table, backend, only_if_expired=True),
        delete_expired_batch=_delete_expired_batch(table, backend),
        expired_bound=_expired_bound(table),
        delete_expired_upto=_delete_expired_upto(table),
    )
