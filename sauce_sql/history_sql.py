"""The pieces history's statements are built from: bind parameters, expressions and
small statements. No I/O; :mod:`sauce_sql.history_statements` assembles them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Delete,
    Insert,
    Select,
    String,
    Table,
    bindparam,
    case,
    delete,
    func,
    literal,
    literal_column,
    null,
    select,
    true,
    tuple_,
    union_all,
)

from sauce_sql.backends import backend_for
from sauce_sql.backends.sqlite.dialect import SQLITE_FAMILY_FUNCTION, SQLITE_MASK_FUNCTION
from sauce_sql.schema import VALUE_COUNTERS, UTCDateTime

__all__ = [
    "FOLDED",
    "HISTORY_IP_MODES",
    "KEY",
    "SQLITE_FAMILY_FUNCTION",
    "SQLITE_MASK_FUNCTION",
    "archive",
    "archived_ip",
    "bound",
    "bucket_of",
    "copy_columns",
    "count_revival",
    "family_of",
    "fold_browsers",
    "fold_into",
    "fold_values",
    "folded",
    "revival_values",
    "row_upto",
    "uncopy",
]

#: What archiving does with a client IP: keep it, mask it (IPv4 to /24, IPv6 to /48),
#: or drop it.
HISTORY_IP_MODES = ("mask", "drop", "keep")

NOW = bindparam("now", type_=UTCDateTime())
BATCH = bindparam("batch", type_=BigInteger())


def bucket_of(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """The start of the 15-minute UTC bucket holding a stored time, as stored times are
    (the backend's ``bucket_of``)."""
    return backend_for(dialect).bucket_of(column)


def archived_ip(column: ColumnElement[Any], dialect: str, mode: str) -> ColumnElement[Any]:
    """What history keeps of a client IP, in ``mode`` (see :data:`HISTORY_IP_MODES`)."""
    if mode == "keep":
        return column
    if mode == "drop":
        return null()
    if mode != "mask":
        raise ValueError(f"unsupported history IP mode {mode!r}")
    return backend_for(dialect).masked_ip(column)


def family_of(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """The browser family of a stored user agent, as :func:`sauce_sql.browsers.browser_family`
    names it (the backend's ``browser_family``)."""
    return backend_for(dialect).browser_family(column)


def revival_values(live: Table, uid: Any, now: Any, expires: Any) -> dict[str, Any]:
    """What a revival sets on the id's row: the client's user agent and IP, its user
    (the row's when the client gives none), and a new expiry. ``uid``, ``now`` and
    ``expires`` are the statement's own parameters."""
    return {
        "user_agent": bindparam("ua", type_=String()),
        "client_ip": bindparam("ip", type_=String()),
        "user_id": func.coalesce(uid, live.c.user_id),
        "last_modified": now,
        "expires_at": expires,
    }


def row_upto(table: Table, dialect: str) -> ColumnElement[bool]:
    """``(expires_at, session_id) <=`` a bound read from the table, as stored."""
    at_type: Any = String() if backend_for(dialect).times_as_text else UTCDateTime()
    bound = tuple_(bindparam("bound_at", type_=at_type), bindparam("bound_id", type_=String()))
    return tuple_(table.c.expires_at, table.c.session_id) <= bound


def bound(table: Table, until: ColumnElement[Any]) -> Select[Any]:
    """The (expires_at, session_id) of the ``batch``-th oldest row expired by ``until``."""
    return (
        select(table.c.expires_at, table.c.session_id)
        .where(table.c.expires_at <= until)
        .order_by(table.c.expires_at, table.c.session_id)
        .limit(literal_column("1"))
        .offset(BATCH)
    )


def copy_columns(source: Any, live: Table, dialect: str, ip_mode: str) -> list[ColumnElement[Any]]:
    """The live table's columns of ``source`` (a table or CTE), the IP as archived."""
    return [
        archived_ip(source.c.client_ip, dialect, ip_mode)
        if column.name == "client_ip"
        else source.c[column.name]
        for column in live.c
    ]


def folded(history: Any, dialect: str) -> list[ColumnElement[Any]]:
    """One aggregates row per bucket of ``history`` rows (a table or CTE)."""
    return [
        bucket_of(history.c.created_at, dialect).label("bucket_start"),
        func.count().label("sessions"),
        func.sum(history.c.view_sequence).label("views"),
        func.sum(history.c.event_sequence).label("events"),
        func.count(case((history.c.view_sequence <= 1, 1))).label("bounces"),
        func.count(history.c.user_id).label("identified"),
    ]


FOLDED = ("bucket_start", "sessions", "views", "events", "bounces", "identified")
_ONE: ColumnElement[Any] = literal_column("1")
_TWO: ColumnElement[Any] = literal_column("2")
_THREE: ColumnElement[Any] = literal_column("3")


def fold_browsers(table: Table, dialect: str, history: Any, where: Any = None) -> Insert:
    """Add the sessions of ``history`` rows (a table or CTE; those matching ``where``)
    to ``table`` (:func:`~sauce_sql.schema.browser_aggregates_table`) per bucket and
    browser family."""
    rows = select(
        bucket_of(history.c.created_at, dialect).label("bucket_start"),
        family_of(history.c.user_agent, dialect).label("family"),
        func.count().label("sessions"),
    )
    if where is not None:
        rows = rows.where(where)
    insert = backend_for(dialect).insert
    statement = insert(table).from_select(
        ["bucket_start", "family", "sessions"], rows.group_by(_ONE, _TWO)
    )
    return statement.on_conflict_do_update(
        index_elements=[table.c.bucket_start, table.c.family],
        set_={"sessions": table.c.sessions + statement.excluded.sessions},
    )


def fold_values(table: Table, dialect: str, history: Any, where: Any = None) -> Insert:
    """Add the sessions of ``history`` rows (a table or CTE; those matching ``where``)
    to ``table`` (:func:`~sauce_sql.schema.value_aggregates_table`) per bucket, counter
    and value."""
    parts = []
    for name, column in zip(
        VALUE_COUNTERS, (history.c.view_sequence, history.c.event_sequence), strict=True
    ):
        part = select(
            bucket_of(history.c.created_at, dialect).label("bucket_start"),
            literal(name, String()).label("counter"),
            column.label("value"),
            func.count().label("sessions"),
        )
        if where is not None:
            part = part.where(where)
        parts.append(part.group_by(_ONE, _THREE))
    both = union_all(*parts).subquery("counted")
    # SQLite reads ON CONFLICT after a bare SELECT as a join's ON: a WHERE settles it.
    rows = select(*both.c).where(true())
    insert = backend_for(dialect).insert
    statement = insert(table).from_select(["bucket_start", "counter", "value", "sessions"], rows)
    return statement.on_conflict_do_update(
        index_elements=[table.c.bucket_start, table.c.counter, table.c.value],
        set_={"sessions": table.c.sessions + statement.excluded.sessions},
    )


def fold_into(aggregates: Table, dialect: str, rows: Select[Any]) -> Insert:
    """Add per-bucket counts to the aggregates, bucket by bucket."""
    insert = backend_for(dialect).insert
    statement = insert(aggregates).from_select(list(FOLDED), rows)
    return statement.on_conflict_do_update(
        index_elements=[aggregates.c.bucket_start],
        set_={name: aggregates.c[name] + statement.excluded[name] for name in FOLDED[1:]},
    )


def count_revival(aggregates: Table, dialect: str, rows: Any = None) -> Insert:
    insert = backend_for(dialect).insert
    bucket = bindparam("bucket", type_=UTCDateTime())
    if rows is None:
        statement = insert(aggregates).values(bucket_start=bucket, revived=literal_column("1"))
    else:
        statement = insert(aggregates).from_select(["bucket_start", "revived"], rows)
    return statement.on_conflict_do_update(
        index_elements=[aggregates.c.bucket_start],
        set_={"revived": aggregates.c.revived + 1},
    )


def archive(history: Table, dialect: str, names: list[str], rows: Select[Any]) -> Insert:
    """Copy ``rows`` into history.

    Two sessions of one id that expire at the same microsecond (possible only with a
    clock standing still, or a cleanup given a moment ahead) share a key: the one
    archived later, the latest state of that id, replaces the other.
    """
    insert = backend_for(dialect).insert
    statement = insert(history).from_select(names, rows)
    return statement.on_conflict_do_update(
        index_elements=[history.c.expires_at, history.c.session_id],
        set_={name: statement.excluded[name] for name in names if name not in KEY},
    )


KEY = ("expires_at", "session_id")


def uncopy(
    live: Table, history: Table, kept: ColumnElement[bool], copied: ColumnElement[bool]
) -> Delete:
    """Delete the history copies of rows that are still live after their delete."""
    key = tuple_(history.c.expires_at, history.c.session_id)
    still_live = select(live.c.expires_at, live.c.session_id).where(kept)
    return delete(history).where(copied, key.in_(still_live))
