"""PostgreSQL's history statements, each one statement of data-modifying CTEs
(revival from history, a creation that archives an expired row first, erasure,
retention). No I/O; :mod:`sauce_sql.history_statements` gathers them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Insert,
    Select,
    String,
    Table,
    Update,
    and_,
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
from sqlalchemy.dialects import postgresql

from sauce_sql.history_sql import (
    archive,
    copy_columns,
    count_revival,
    fold_browsers,
    fold_into,
    fold_values,
    folded,
    revival_values,
)
from sauce_sql.schema import UTCDateTime

__all__ = ["create_archiving", "forget", "retire", "revive", "revive_existing"]

_now = bindparam("now", type_=UTCDateTime())
_expires = bindparam("expires", type_=UTCDateTime())
_sid = bindparam("sid", type_=String())
_uid = bindparam("uid", type_=String())


def revive(live: Table, history: Table, aggregates: Table, *, only_if_expired: bool) -> Select[Any]:
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


def revive_existing(live: Table, *, only_if_expired: bool) -> Update:
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
        .values(revival_values(live, _uid, _now, _expires))
        .returning(*live.c, (before <= _now).label("was_expired"))
    )


def create_archiving(live: Table, history: Table, ip_mode: str) -> Insert:
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


def forget(live: Table, history: Table, condition: str) -> Select[Any]:
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


def retire(
    history: Table,
    aggregates: Table,
    browsers: Table,
    values: Table,
    condition: ColumnElement[bool],
) -> Select[Any]:
    """Fold history rows into the aggregates (counts, browser families, counter values)
    and delete them, in one statement; their count."""
    gone = delete(history).where(condition).returning(*history.c).cte("gone")
    folding = fold_into(
        aggregates, "postgresql", select(*folded(gone, "postgresql")).group_by(literal_column("1"))
    ).cte("folded")
    families = fold_browsers(browsers, "postgresql", gone).cte("families")
    counted = fold_values(values, "postgresql", gone).cte("counted_values")
    return select(func.count()).select_from(gone).add_cte(folding, families, counted)
