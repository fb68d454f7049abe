"""The statements of history, retention and erasure, built as SQLAlchemy constructs. No I/O.

Bind parameters beyond :mod:`sauce_sql.statements`' own: ``cutoff`` (history rows that
expired at or before it are past retention), ``bucket`` (the 15-minute UTC bucket a
revival is counted in).

PostgreSQL runs each operation as one statement, with data-modifying CTEs
(``WITH moved AS (DELETE ... RETURNING *) INSERT ...``): atomic, and usable through a
pooler in statement mode. SQLite has no such CTEs, so its operations are a few
statements that :mod:`sauce_sql.history` runs in one transaction on the write path;
the statements of one transaction select the same rows by the same condition.
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
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite

from sauce_sql.schema import (
    UTCDateTime,
    aggregates_table,
    history_table,
    sessions_table,
)

__all__ = [
    "HISTORY_IP_MODES",
    "SQLITE_MASK_FUNCTION",
    "HistoryStatements",
    "bucket_of",
    "build_history",
]

#: What archiving does with a client IP: keep it, mask it (IPv4 to /24, IPv6 to /48),
#: or drop it.
HISTORY_IP_MODES = ("mask", "drop", "keep")
#: The SQL function the store registers on its SQLite connections to mask IPv6.
SQLITE_MASK_FUNCTION = "sauce_sql_mask_ip"

_now = bindparam("now", type_=UTCDateTime())
_expires = bindparam("expires", type_=UTCDateTime())
_sid = bindparam("sid", type_=String())
_uid = bindparam("uid", type_=String())
_batch = bindparam("batch", type_=BigInteger())
_cutoff = bindparam("cutoff", type_=UTCDateTime())


@dataclass(frozen=True, slots=True)
class HistoryStatements:
    """The history statements of one table on one dialect (None where the dialect
    does not use one), and the parameters each takes."""

    # Archiving: PostgreSQL moves a batch in one statement; SQLite copies then deletes
    # the rows up to a bound (or every expired row, for the last batch).
    archive_batch: Insert | None
    expired_bound: Select[Any]
    archive_upto: Insert | None
    delete_upto: Delete | None
    archive_rest: Insert | None
    delete_rest: Delete | None
    # What a delete trigger kept in the live table leaves history again (SQLite).
    uncopy_upto: Delete | None
    uncopy_rest: Delete | None
    # Retention: fold the oldest history rows into aggregates, then delete them.
    retention_bound: Select[Any]
    retire_upto: Select[Any] | None
    retire_rest: Select[Any] | None
    fold_upto: Insert | None
    fold_rest: Insert | None
    drop_upto: Delete | None
    drop_rest: Delete | None
    # Revival from history.
    revive: Select[Any] | None
    revive_if_expired: Select[Any] | None
    live_expiry: Select[Any] | None
    restore: Insert | None
    unarchive: Delete | None
    count_revival: Insert | None
    # Erasure.
    forget_user: Select[Any] | None
    forget_session: Select[Any] | None
    delete_live_user: Delete | None
    delete_history_user: Delete | None
    delete_live_session: Delete | None
    delete_history_session: Delete | None

    _BOUND = ("bound_at", "bound_id")
    _REVIVE = ("sid", "now", "expires", "ua", "ip", "uid")
    #: Runtime parameter names, per statement attribute.
    PARAMETERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "archive_batch": ("now", "batch"),
        "expired_bound": ("now", "batch"),
        "archive_upto": _BOUND,
        "delete_upto": _BOUND,
        "archive_rest": ("now",),
        "delete_rest": ("now",),
        "uncopy_upto": _BOUND,
        "uncopy_rest": ("now",),
        "retention_bound": ("cutoff", "batch"),
        "retire_upto": _BOUND,
        "retire_rest": ("cutoff",),
        "fold_upto": _BOUND,
        "fold_rest": ("cutoff",),
        "drop_upto": _BOUND,
        "drop_rest": ("cutoff",),
        "revive": (*_REVIVE, "bucket"),
        "revive_if_expired": (*_REVIVE, "bucket"),
        "live_expiry": ("sid",),
        "restore": _REVIVE,
        "unarchive": ("sid",),
        "count_revival": ("bucket",),
        "forget_user": ("uid",),
        "forget_session": ("sid",),
        "delete_live_user": ("uid",),
        "delete_history_user": ("uid",),
        "delete_live_session": ("sid",),
        "delete_history_session": ("sid",),
    }


def bucket_of(column: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """The start of the 15-minute UTC bucket holding a stored time, as stored times are."""
    if dialect == "postgresql":
        origin: ColumnElement[Any] = literal_column("TIMESTAMPTZ '2000-01-01 00:00:00+00'")
        return func.date_bin(literal_column("INTERVAL '15 minutes'"), column, origin)
    if dialect == "sqlite":
        # Stored as UTC text 'YYYY-MM-DD HH:MM:SS.ffffff': keep the hour, round the minutes.
        minute = cast(func.substr(column, 15, 2), BigInteger())
        return func.printf(
            literal("%s%02d:00.000000", String()),
            func.substr(column, 1, 14),
            minute - minute.op("%")(15),
            type_=String(),
        )
    raise ValueError(f"unsupported dialect {dialect!r}")


def _archived_ip(column: ColumnElement[Any], dialect: str, mode: str) -> ColumnElement[Any]:
    """What history keeps of a client IP, in ``mode`` (see :data:`HISTORY_IP_MODES`)."""
    if mode == "keep":
        return column
    if mode == "drop":
        return null()
    if mode != "mask":
        raise ValueError(f"unsupported history IP mode {mode!r}")
    if dialect == "postgresql":
        # Stored addresses are canonical; a zone id ("fe80::1%eth0") is no inet.
        address = cast(func.split_part(column, "%", 1), postgresql.INET())
        return case(
            (column.is_(None), null()),
            (
                func.family(address) == 4,
                func.host(func.network(func.set_masklen(address, 24))),
            ),
            else_=func.host(func.network(func.set_masklen(address, 48))),
        )
    if dialect == "sqlite":
        return case(
            (column.is_(None), null()),
            # Canonical IPv4: dropping the last number keeps the /24.
            (func.instr(column, ":") == 0, func.rtrim(column, "0123456789").concat("0")),
            else_=getattr(func, SQLITE_MASK_FUNCTION)(column),
        )
    raise ValueError(f"unsupported dialect {dialect!r}")


def _row_upto(table: Table, dialect: str) -> ColumnElement[bool]:
    """``(expires_at, session_id) <=`` a bound read from the table, as stored."""
    at_type: Any = String() if dialect == "sqlite" else UTCDateTime()
    bound = tuple_(bindparam("bound_at", type_=at_type), bindparam("bound_id", type_=String()))
    return tuple_(table.c.expires_at, table.c.session_id) <= bound


def _bound(table: Table, until: ColumnElement[Any]) -> Select[Any]:
    """The (expires_at, session_id) of the ``batch``-th oldest row expired by ``until``."""
    return (
        select(table.c.expires_at, table.c.session_id)
        .where(table.c.expires_at <= until)
        .order_by(table.c.expires_at, table.c.session_id)
        .limit(literal_column("1"))
        .offset(_batch)
    )


def _copy(source: Any, live: Table, dialect: str, ip_mode: str) -> list[ColumnElement[Any]]:
    """The live table's columns of ``source`` (a table or CTE), the IP as archived."""
    return [
        _archived_ip(source.c.client_ip, dialect, ip_mode)
        if column.name == "client_ip"
        else source.c[column.name]
        for column in live.c
    ]


def _folded(history: Any, dialect: str) -> list[ColumnElement[Any]]:
    """One aggregates row per bucket of ``history`` rows (a table or CTE)."""
    return [
        bucket_of(history.c.created_at, dialect).label("bucket_start"),
        func.count().label("sessions"),
        func.sum(history.c.view_sequence).label("views"),
        func.sum(history.c.event_sequence).label("events"),
        func.count(case((history.c.view_sequence <= 1, 1))).label("bounces"),
        func.count(history.c.user_id).label("identified"),
    ]


_FOLDED = ("bucket_start", "sessions", "views", "events", "bounces", "identified")


def _fold_into(aggregates: Table, dialect: str, rows: Select[Any]) -> Insert:
    """Add per-bucket counts to the aggregates, bucket by bucket."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(aggregates).from_select(list(_FOLDED), rows)
    return statement.on_conflict_do_update(
        index_elements=[aggregates.c.bucket_start],
        set_={name: aggregates.c[name] + statement.excluded[name] for name in _FOLDED[1:]},
    )


def _count_revival(aggregates: Table, dialect: str, rows: Any = None) -> Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    bucket = bindparam("bucket", type_=UTCDateTime())
    if rows is None:
        statement = insert(aggregates).values(bucket_start=bucket, revived=literal_column("1"))
    else:
        statement = insert(aggregates).from_select(["bucket_start", "revived"], rows)
    return statement.on_conflict_do_update(
        index_elements=[aggregates.c.bucket_start],
        set_={"revived": aggregates.c.revived + 1},
    )


def _pg_revive(
    live: Table, history: Table, aggregates: Table, *, only_if_expired: bool
) -> Select[Any]:
    """Revival in one PostgreSQL statement: the live or expired row if there is one,
    else the id's latest archived session (taken out of history), else a new one."""
    old = select(live.c.expires_at).where(live.c.session_id == _sid).cte("old")
    latest = (
        select(history)
        .where(history.c.session_id == _sid, ~exists(select(old.c.expires_at)))
        .order_by(history.c.expires_at.desc())
        .limit(literal_column("1"))
        .cte("latest")
    )
    one = select(literal_column("1").label("one")).subquery("one")
    values = select(
        _sid,
        bindparam("ua", type_=String()),
        bindparam("ip", type_=String()),
        func.coalesce(_uid, latest.c.user_id),
        func.coalesce(latest.c.view_sequence, literal_column("0", BigInteger())),
        func.coalesce(latest.c.event_sequence, literal_column("0", BigInteger())),
        func.coalesce(latest.c.created_at, _now),
        _now,
        _expires,
    ).select_from(one.outerjoin(latest, true()))
    insert = postgresql.insert(live).from_select([c.name for c in live.c], values)
    excluded = insert.excluded
    inserted: ColumnElement[Any] = literal_column("(xmax = 0)").label("inserted")
    up = (
        insert.on_conflict_do_update(
            index_elements=[live.c.session_id],
            set_={
                "user_agent": excluded.user_agent,
                "client_ip": excluded.client_ip,
                "user_id": func.coalesce(_uid, live.c.user_id),
                "last_modified": excluded.last_modified,
                "expires_at": excluded.expires_at,
            },
            where=(live.c.expires_at <= _now) if only_if_expired else None,
        )
        .returning(*live.c, inserted)
        .cte("up")
    )
    unarchived = (
        delete(history)
        .where(
            up.c.inserted,
            history.c.session_id == latest.c.session_id,
            history.c.expires_at == latest.c.expires_at,
        )
        .returning(literal_column("1"))
        .cte("unarchived")
    )
    revived = or_(
        and_(up.c.inserted, exists(select(latest.c.session_id))),
        and_(~up.c.inserted, exists(select(old.c.expires_at).where(old.c.expires_at <= _now))),
    )
    bucket = bindparam("bucket", type_=UTCDateTime())
    counted = _count_revival(
        aggregates, "postgresql", select(bucket, literal_column("1")).where(revived)
    ).cte("counted")
    return select(*(up.c[c.name] for c in live.c)).add_cte(unarchived, counted)


def _pg_forget(live: Table, history: Table, condition: str) -> Select[Any]:
    """Delete a user's or an id's rows from both tables in one statement; their count."""
    param = _uid if condition == "user_id" else _sid
    ones: list[ColumnElement[Any]] = [literal_column("1")]
    gone_live = delete(live).where(live.c[condition] == param).returning(*ones).cte("gone_live")
    gone_history = (
        delete(history).where(history.c[condition] == param).returning(*ones).cte("gone_history")
    )
    counts = (
        select(func.count()).select_from(gone_live).scalar_subquery()
        + select(func.count()).select_from(gone_history).scalar_subquery()
    )
    return select(counts)


def _pg_retire(history: Table, aggregates: Table, condition: ColumnElement[bool]) -> Select[Any]:
    """Fold history rows into aggregates and delete them, in one statement; their count."""
    gone = delete(history).where(condition).returning(*history.c).cte("gone")
    folded = _fold_into(
        aggregates, "postgresql", select(*_folded(gone, "postgresql")).group_by(literal_column("1"))
    ).cte("folded")
    return select(func.count()).select_from(gone).add_cte(folded)


def _archive(history: Table, dialect: str, names: list[str], rows: Select[Any]) -> Insert:
    """Copy ``rows`` into history.

    Two sessions of one id that expire at the same microsecond (possible only with a
    clock standing still, or a cleanup given a moment ahead) share a key: the one
    archived later, the latest state of that id, replaces the other.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(history).from_select(names, rows)
    return statement.on_conflict_do_update(
        index_elements=[history.c.expires_at, history.c.session_id],
        set_={name: statement.excluded[name] for name in names if name not in _KEY},
    )


_KEY = ("expires_at", "session_id")


def _uncopy(
    live: Table, history: Table, kept: ColumnElement[bool], copied: ColumnElement[bool]
) -> Delete:
    """Delete the history copies of rows that are still live after their delete."""
    key = tuple_(history.c.expires_at, history.c.session_id)
    still_live = select(live.c.expires_at, live.c.session_id).where(kept)
    return delete(history).where(copied, key.in_(still_live))


def build_history(table_name: str, dialect: str, ip_mode: str) -> HistoryStatements:
    """All history statements of ``table_name`` on ``dialect``, archiving IPs in ``ip_mode``."""
    live = sessions_table(table_name)
    history = history_table(table_name)
    aggregates = aggregates_table(table_name)
    names = [c.name for c in live.c]
    expired = live.c.expires_at <= _now
    retention_bound = _bound(history, _cutoff)
    if dialect == "postgresql":
        ctid: ColumnElement[Any] = literal_column("ctid")
        victims = select(ctid).where(expired).limit(_batch).scalar_subquery()
        moved = (
            delete(live)
            .where(ctid == any_(func.array(victims)), expired)
            .returning(*live.c)
            .cte("moved")
        )
        archive = _archive(history, dialect, names, select(*_copy(moved, live, dialect, ip_mode)))
        return HistoryStatements(
            archive_batch=archive.add_cte(moved),
            expired_bound=_bound(live, _now),
            archive_upto=None,
            delete_upto=None,
            archive_rest=None,
            delete_rest=None,
            uncopy_upto=None,
            uncopy_rest=None,
            retention_bound=retention_bound,
            retire_upto=_pg_retire(history, aggregates, _row_upto(history, dialect)),
            retire_rest=_pg_retire(history, aggregates, history.c.expires_at <= _cutoff),
            fold_upto=None,
            fold_rest=None,
            drop_upto=None,
            drop_rest=None,
            revive=_pg_revive(live, history, aggregates, only_if_expired=False),
            revive_if_expired=_pg_revive(live, history, aggregates, only_if_expired=True),
            live_expiry=None,
            restore=None,
            unarchive=None,
            count_revival=None,
            forget_user=_pg_forget(live, history, "user_id"),
            forget_session=_pg_forget(live, history, "session_id"),
            delete_live_user=None,
            delete_history_user=None,
            delete_live_session=None,
            delete_history_session=None,
        )
    if dialect != "sqlite":
        raise ValueError(f"unsupported dialect {dialect!r}")
    upto = _row_upto(live, dialect)
    history_upto = _row_upto(history, dialect)
    history_past = history.c.expires_at <= _cutoff
    latest = (
        select(
            history.c.session_id,
            bindparam("ua", type_=String()),
            bindparam("ip", type_=String()),
            func.coalesce(_uid, history.c.user_id),
            history.c.view_sequence,
            history.c.event_sequence,
            history.c.created_at,
            _now,
            _expires,
        )
        .where(history.c.session_id == _sid)
        .order_by(history.c.expires_at.desc())
        .limit(literal_column("1"))
    )
    newest = select(func.max(history.c.expires_at)).where(history.c.session_id == _sid)

    def folded(condition: ColumnElement[bool]) -> Insert:
        rows = select(*_folded(history, dialect)).where(condition).group_by(literal_column("1"))
        return _fold_into(aggregates, dialect, rows)

    return HistoryStatements(
        archive_batch=None,
        expired_bound=_bound(live, _now),
        archive_upto=_archive(
            history, dialect, names, select(*_copy(live, live, dialect, ip_mode)).where(upto)
        ),
        delete_upto=delete(live).where(upto),
        archive_rest=_archive(
            history, dialect, names, select(*_copy(live, live, dialect, ip_mode)).where(expired)
        ),
        delete_rest=delete(live).where(expired),
        uncopy_upto=_uncopy(live, history, upto, _row_upto(history, dialect)),
        uncopy_rest=_uncopy(live, history, expired, history.c.expires_at <= _now),
        retention_bound=retention_bound,
        retire_upto=None,
        retire_rest=None,
        fold_upto=folded(history_upto),
        fold_rest=folded(history_past),
        drop_upto=delete(history).where(history_upto),
        drop_rest=delete(history).where(history_past),
        revive=None,
        revive_if_expired=None,
        live_expiry=select(live.c.expires_at).where(live.c.session_id == _sid),
        restore=sqlite.insert(live).from_select(names, latest).returning(*live.c),
        unarchive=delete(history).where(
            history.c.session_id == _sid, history.c.expires_at == newest.scalar_subquery()
        ),
        count_revival=_count_revival(aggregates, dialect),
        forget_user=None,
        forget_session=None,
        delete_live_user=delete(live).where(live.c.user_id == _uid),
        delete_history_user=delete(history).where(history.c.user_id == _uid),
        delete_live_session=delete(live).where(live.c.session_id == _sid),
        delete_history_session=delete(history).where(history.c.session_id == _sid),
    )
