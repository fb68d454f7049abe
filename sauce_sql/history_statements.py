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
    Update,
    and_,
    any_,
    bindparam,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from sauce_sql.history_sql import (
    archive,
    bound,
    copy_columns,
    count_revival,
    fold_into,
    folded,
    row_upto,
    uncopy,
)
from sauce_sql.schema import (
    UTCDateTime,
    aggregates_table,
    history_table,
    sessions_table,
)

__all__ = ["HistoryStatements", "build_history"]


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
    revive_existing: Update | None
    revive_existing_if_expired: Update | None
    live_expiry: Select[Any] | None
    restore: Insert | None
    unarchive: Delete | None
    # A new session under an id whose expired row is still live: that row archived first.
    create_archiving: Insert | None
    archive_session: Insert | None
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
        "revive_existing": _REVIVE,
        "revive_existing_if_expired": _REVIVE,
        "live_expiry": ("sid",),
        "restore": _REVIVE,
        "unarchive": ("sid",),
        "create_archiving": ("sid", "now", "expires", "ua", "ip", "uid"),
        "archive_session": ("sid", "now"),
        "count_revival": ("bucket",),
        "forget_user": ("uid",),
        "forget_session": ("sid",),
        "delete_live_user": ("uid",),
        "delete_history_user": ("uid",),
        "delete_live_session": ("sid",),
        "delete_history_session": ("sid",),
    }


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
    counted = count_revival(
        aggregates, "postgresql", select(bucket, literal_column("1")).where(revived)
    ).cte("counted")
    return select(*(up.c[c.name] for c in live.c)).add_cte(unarchived, counted)


def _pg_revive_existing(live: Table, *, only_if_expired: bool) -> Update:
    """The common revival, of an id whose row is there (live, or expired and not yet
    archived): one plain UPDATE, far cheaper to plan than :func:`_pg_revive`, which
    also says whether the row was expired (a subquery in RETURNING sees the row as it
    was before the statement), so that the revival is counted. No row: nothing
    returned, and the full revival runs next."""
    before = select(live.c.expires_at).where(live.c.session_id == _sid).scalar_subquery()
    conditions = [live.c.session_id == _sid]
    if only_if_expired:
        conditions.append(live.c.expires_at <= _now)
    return (
        update(live)
        .where(*conditions)
        .values(
            user_agent=bindparam("ua", type_=String()),
            client_ip=bindparam("ip", type_=String()),
            user_id=func.coalesce(_uid, live.c.user_id),
            last_modified=_now,
            expires_at=_expires,
        )
        .returning(*live.c, (before <= _now).label("was_expired"))
    )


def _pg_create_archiving(live: Table, history: Table, ip_mode: str) -> Insert:
    """A new session in one statement, the expired row under its id (if any) moved to
    history first; no row returned when a live session holds the id.

    The main INSERT reads a count of the archived rows, so that the CTEs run before
    it: the expired row is then deleted (by this transaction) when the INSERT checks
    the key, and the new row goes in beside the archived one. Left alone, PostgreSQL
    would run the INSERT first and replace the row before the DELETE could see it.
    """
    expired = live.c.expires_at <= _now
    old = delete(live).where(live.c.session_id == _sid, expired).returning(*live.c).cte("old")
    names = [c.name for c in live.c]
    archived = (
        archive(
            history, "postgresql", names, select(*copy_columns(old, live, "postgresql", ip_mode))
        )
        .returning(literal_column("1"))
        .cte("archived")
    )
    after = select(func.count()).select_from(archived).scalar_subquery() >= 0
    zero = literal_column("0", BigInteger())
    values = select(
        _sid,
        bindparam("ua", type_=String()),
        bindparam("ip", type_=String()),
        _uid,
        zero,
        zero,
        _now,
        _now,
        _expires,
    ).where(after)
    insert = postgresql.insert(live).from_select(names, values)
    fresh = {name: insert.excluded[name] for name in names if name != "session_id"}
    return (
        insert.on_conflict_do_update(index_elements=[live.c.session_id], set_=fresh, where=expired)
        .returning(*live.c)
        .add_cte(old)
        .add_cte(archived)
    )


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
    folding = fold_into(
        aggregates, "postgresql", select(*folded(gone, "postgresql")).group_by(literal_column("1"))
    ).cte("folded")
    return select(func.count()).select_from(gone).add_cte(folding)


def build_history(table_name: str, dialect: str, ip_mode: str) -> HistoryStatements:
    """All history statements of ``table_name`` on ``dialect``, archiving IPs in ``ip_mode``."""
    live = sessions_table(table_name)
    history = history_table(table_name)
    aggregates = aggregates_table(table_name)
    names = [c.name for c in live.c]
    expired = live.c.expires_at <= _now
    retention_bound = bound(history, _cutoff)
    if dialect == "postgresql":
        ctid: ColumnElement[Any] = literal_column("ctid")
        victims = select(ctid).where(expired).limit(_batch).scalar_subquery()
        moved = (
            delete(live)
            .where(ctid == any_(func.array(victims)), expired)
            .returning(*live.c)
            .cte("moved")
        )
        archiving = archive(
            history, dialect, names, select(*copy_columns(moved, live, dialect, ip_mode))
        )
        return HistoryStatements(
            archive_batch=archiving.add_cte(moved),
            expired_bound=bound(live, _now),
            archive_upto=None,
            delete_upto=None,
            archive_rest=None,
            delete_rest=None,
            uncopy_upto=None,
            uncopy_rest=None,
            retention_bound=retention_bound,
            retire_upto=_pg_retire(history, aggregates, row_upto(history, dialect)),
            retire_rest=_pg_retire(history, aggregates, history.c.expires_at <= _cutoff),
            fold_upto=None,
            fold_rest=None,
            drop_upto=None,
            drop_rest=None,
            revive=_pg_revive(live, history, aggregates, only_if_expired=False),
            revive_if_expired=_pg_revive(live, history, aggregates, only_if_expired=True),
            revive_existing=_pg_revive_existing(live, only_if_expired=False),
            revive_existing_if_expired=_pg_revive_existing(live, only_if_expired=True),
            live_expiry=None,
            restore=None,
            unarchive=None,
            create_archiving=_pg_create_archiving(live, history, ip_mode),
            archive_session=None,
            count_revival=count_revival(aggregates, dialect),
            forget_user=_pg_forget(live, history, "user_id"),
            forget_session=_pg_forget(live, history, "session_id"),
            delete_live_user=None,
            delete_history_user=None,
            delete_live_session=None,
            delete_history_session=None,
        )
    if dialect != "sqlite":
        raise ValueError(f"unsupported dialect {dialect!r}")
    upto = row_upto(live, dialect)
    history_upto = row_upto(history, dialect)
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

    def fold_where(condition: ColumnElement[bool]) -> Insert:
        rows = select(*folded(history, dialect)).where(condition).group_by(literal_column("1"))
        return fold_into(aggregates, dialect, rows)

    return HistoryStatements(
        archive_batch=None,
        expired_bound=bound(live, _now),
        archive_upto=archive(
            history, dialect, names, select(*copy_columns(live, live, dialect, ip_mode)).where(upto)
        ),
        delete_upto=delete(live).where(upto),
        archive_rest=archive(
            history,
            dialect,
            names,
            select(*copy_columns(live, live, dialect, ip_mode)).where(expired),
        ),
        delete_rest=delete(live).where(expired),
        uncopy_upto=uncopy(live, history, upto, row_upto(history, dialect)),
        uncopy_rest=uncopy(live, history, expired, history.c.expires_at <= _now),
        retention_bound=retention_bound,
        retire_upto=None,
        retire_rest=None,
        fold_upto=fold_where(history_upto),
        fold_rest=fold_where(history_past),
        drop_upto=delete(history).where(history_upto),
        drop_rest=delete(history).where(history_past),
        revive=None,
        revive_if_expired=None,
        revive_existing=None,
        revive_existing_if_expired=None,
        live_expiry=select(live.c.expires_at).where(live.c.session_id == _sid),
        restore=sqlite.insert(live).from_select(names, latest).returning(*live.c),
        create_archiving=None,
        archive_session=archive(
            history,
            dialect,
            names,
            select(*copy_columns(live, live, dialect, ip_mode)).where(
                live.c.session_id == _sid, expired
            ),
        ),
        unarchive=delete(history).where(
            history.c.session_id == _sid, history.c.expires_at == newest.scalar_subquery()
        ),
        count_revival=count_revival(aggregates, dialect),
        forget_user=None,
        forget_session=None,
        delete_live_user=delete(live).where(live.c.user_id == _uid),
        delete_history_user=delete(history).where(history.c.user_id == _uid),
        delete_live_session=delete(live).where(live.c.session_id == _sid),
        delete_history_session=delete(history).where(history.c.session_id == _sid),
    )
