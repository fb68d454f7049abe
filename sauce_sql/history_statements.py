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
    any_,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    update,
)

from sauce_sql import history_pg
from sauce_sql.backends import backend_for
from sauce_sql.history_sql import (
    archive,
    bound,
    copy_columns,
    count_revival,
    fold_browsers,
    fold_into,
    fold_values,
    folded,
    revival_values,
    row_upto,
    uncopy,
)
from sauce_sql.schema import (
    UTCDateTime,
    aggregates_table,
    browser_aggregates_table,
    history_table,
    sessions_table,
    value_aggregates_table,
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
    fold_browsers_upto: Insert | None
    fold_browsers_rest: Insert | None
    fold_values_upto: Insert | None
    fold_values_rest: Insert | None
    drop_upto: Delete | None
    drop_rest: Delete | None
    # Revival from history.
    revive: Select[Any] | None
    revive_if_expired: Select[Any] | None
    revive_existing: Update | None
    revive_existing_if_expired: Update | None
    revive_live: Update | None
    live_expiry: Select[Any] | None
    restore: Insert | None
    unarchive: Delete | None
    # A new session under a given id: first an insert that leaves any row of the id
    # alone; only if there is one, the creation that archives an expired row first.
    create_fresh: Insert
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
        "fold_browsers_upto": _BOUND,
        "fold_browsers_rest": ("cutoff",),
        "fold_values_upto": _BOUND,
        "fold_values_rest": ("cutoff",),
        "drop_upto": _BOUND,
        "drop_rest": ("cutoff",),
        "revive": (*_REVIVE, "bucket"),
        "revive_if_expired": (*_REVIVE, "bucket"),
        "revive_existing": _REVIVE,
        "revive_existing_if_expired": _REVIVE,
        "revive_live": _REVIVE,
        "live_expiry": ("sid",),
        "restore": _REVIVE,
        "unarchive": ("sid",),
        "create_fresh": ("sid", "now", "expires", "ua", "ip", "uid"),
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


def _create_fresh(live: Table, dialect: str) -> Insert:
    """A new session, unless any row (live or expired) holds the id: then no row."""
    insert = backend_for(dialect).insert
    zero = literal_column("0", BigInteger())
    values = insert(live).values(
        session_id=_sid,
        user_agent=bindparam("ua", type_=String()),
        client_ip=bindparam("ip", type_=String()),
        user_id=_uid,
        view_sequence=zero,
        event_sequence=zero,
        created_at=_now,
        last_modified=_now,
        expires_at=_expires,
    )
    return values.on_conflict_do_nothing(index_elements=[live.c.session_id]).returning(*live.c)


def _revive_live(live: Table) -> Update:
    """The revival of a live session (SQLite's common case): one UPDATE of the row if
    it has not expired, as the store's revive upsert would change it. No row: it is
    expired or absent, and the revival's transaction looks further (a revival to
    count, history)."""
    return (
        update(live)
        .where(live.c.session_id == _sid, live.c.expires_at > _now)
        .values(revival_values(live, _uid, _now, _expires))
        .returning(*live.c)
    )


def build_history(table_name: str, dialect: str, ip_mode: str) -> HistoryStatements:
    """All history statements of ``table_name`` on ``dialect``, archiving IPs in ``ip_mode``."""
    live = sessions_table(table_name)
    history = history_table(table_name)
    aggregates = aggregates_table(table_name)
    browsers = browser_aggregates_table(table_name)
    values = value_aggregates_table(table_name)
    names = [c.name for c in live.c]
    expired = live.c.expires_at <= _now
    retention_bound = bound(history, _cutoff)
    backend = backend_for(dialect)
    if backend.writable_ctes:
        # Each move is one statement: DELETE ... RETURNING feeding the INSERT.
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
            retire_upto=history_pg.retire(
                history, aggregates, browsers, values, row_upto(history, dialect)
            ),
            retire_rest=history_pg.retire(
                history, aggregates, browsers, values, history.c.expires_at <= _cutoff
            ),
            fold_upto=None,
            fold_rest=None,
            fold_browsers_upto=None,
            fold_browsers_rest=None,
            fold_values_upto=None,
            fold_values_rest=None,
            drop_upto=None,
            drop_rest=None,
            revive=history_pg.revive(live, history, aggregates, only_if_expired=False),
            revive_if_expired=history_pg.revive(live, history, aggregates, only_if_expired=True),
            revive_existing=history_pg.revive_existing(live, only_if_expired=False),
            revive_existing_if_expired=history_pg.revive_existing(live, only_if_expired=True),
            revive_live=None,
            live_expiry=None,
            restore=None,
            unarchive=None,
            create_fresh=_create_fresh(live, dialect),
            create_archiving=history_pg.create_archiving(live, history, ip_mode),
            archive_session=None,
            count_revival=count_revival(aggregates, dialect),
            forget_user=history_pg.forget(live, history, "user_id"),
            forget_session=history_pg.forget(live, history, "session_id"),
            delete_live_user=None,
            delete_history_user=None,
            delete_live_session=None,
            delete_history_session=None,
        )
    # No data-modifying WITH: copy, then delete, in one transaction (history.py).
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
        fold_browsers_upto=fold_browsers(browsers, dialect, history, history_upto),
        fold_browsers_rest=fold_browsers(browsers, dialect, history, history_past),
        fold_values_upto=fold_values(values, dialect, history, history_upto),
        fold_values_rest=fold_values(values, dialect, history, history_past),
        drop_upto=delete(history).where(history_upto),
        drop_rest=delete(history).where(history_past),
        revive=None,
        revive_if_expired=None,
        revive_existing=None,
        revive_existing_if_expired=None,
        revive_live=_revive_live(live),
        live_expiry=select(live.c.expires_at).where(live.c.session_id == _sid),
        restore=backend.insert(live).from_select(names, latest).returning(*live.c),
        create_fresh=_create_fresh(live, dialect),
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
