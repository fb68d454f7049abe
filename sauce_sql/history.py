"""History, retention and erasure: the operations, driven on a store's executor.

- Archiving: cleanup with ``keep_history`` moves expired rows to ``<table>_history``
  batch by batch (the same adaptive batches as a plain delete,
  :func:`sauce_sql.cleanup.delete_expired`), each batch one transaction, so a crash at
  any moment leaves every session exactly once.
- Retention: history rows that expired more than ``history_max_age`` ago are folded
  into ``<table>_aggregates`` (counts), ``<table>_agg_browsers`` (browser families)
  and ``<table>_agg_values`` (views and events values), and deleted, batch by batch,
  each batch one transaction: the report's figures of their days stay as they were.
- Revival reaches history: an id with no live or expired row but an archived one gets
  its latest archived session back, counters and created_at kept, and no copy stays.
- Erasure: every row of a user or an id, live and archived, deleted at once.

On PostgreSQL each step is one statement (:mod:`sauce_sql.history_statements`); on
SQLite a few statements in one transaction on the write path
(:meth:`~sauce_sql.backends.sqlite.executor.SQLiteExecutor.transaction`). Each is an
operation (:mod:`sauce_sql.ops`), so that Store and AsyncStore run the same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Dialect

from sauce_sql.backends import backend_for
from sauce_sql.backends.sqlite.executor import Run
from sauce_sql.cleanup import START_MOVE_ROWS, StopSignal, delete_expired
from sauce_sql.history_statements import HistoryStatements, build_history
from sauce_sql.ops import Operation, Step, Transaction
from sauce_sql.prepared import Prepared
from sauce_sql.schema import BUCKET_SECONDS

__all__ = [
    "HistoryPrepared",
    "archive_and_retire",
    "archive_expired",
    "bucket_start",
    "recreate",
    "forget",
    "retire_history",
    "revive",
]


class HistoryPrepared:
    """The history statements of one table compiled for the store's dialect."""

    #: The one the store runs itself (on every dialect); the others go through
    #: the operations below.
    create_fresh: Prepared

    def __init__(self, dialect: Dialect, table_name: str, ip_mode: str) -> None:
        backend = backend_for(dialect.name)
        built = build_history(table_name, backend.name, ip_mode)
        self.dialect_name = backend.name
        #: Each move is one statement (the operations below take that form of the
        #: statements, see build_history), rather than a copy and a delete.
        self.writable_ctes = backend.writable_ctes
        for field in fields(built):
            statement = getattr(built, field.name)
            names = HistoryStatements.PARAMETERS[field.name]
            prepared = None if statement is None else Prepared(statement, dialect, names)
            setattr(self, field.name, prepared)


def _statement(prepared: HistoryPrepared, name: str) -> Prepared:
    statement: Prepared | None = prepared.__dict__.get(name)
    if statement is None:
        raise AttributeError(f"no history statement {name!r} on this dialect")
    return statement


def bucket_start(moment: datetime) -> datetime:
    """The start of the 15-minute UTC bucket holding ``moment`` (an aware datetime)."""
    utc = moment.astimezone(timezone.utc)
    seconds = (utc.minute * 60 + utc.second) // BUCKET_SECONDS * BUCKET_SECONDS
    return utc.replace(minute=seconds // 60, second=0, microsecond=0)


# -- archiving and retention ------------------------------------------------------------

_Batch = Generator[Any, Any, tuple[int, bool]]


def _archive_batch(statements: HistoryPrepared, now: datetime, rows: int) -> _Batch:
    if statements.writable_ctes:
        values: dict[str, Any] = {"now": now, "batch": rows}
        _, moved = yield Step(
            _statement(statements, "archive_batch"), values, write=True, slow=True
        )
        if moved == rows:
            return moved, False
        # As for a plain delete: only an empty look ends the cleanup (cleanup._batch).
        bound = {"now": now, "batch": 0}
        left, _ = yield Step(_statement(statements, "expired_bound"), bound)
        return moved, not left
    bound = {"now": now, "batch": rows - 1}
    found, _ = yield Step(_statement(statements, "expired_bound"), bound)
    if found:
        suffix, values = "upto", {"bound_at": found[0][0], "bound_id": found[0][1]}
    else:
        suffix, values = "rest", {"now": now}

    def move(run: Run) -> int:
        _, copied = run(_statement(statements, f"archive_{suffix}"), values)
        _, deleted = run(_statement(statements, f"delete_{suffix}"), values)
        if deleted != copied:
            # A trigger kept some rows in the live table: they stay there only.
            run(_statement(statements, f"uncopy_{suffix}"), values)
        return deleted

    deleted: int = yield Transaction(move)
    return deleted, not found


def _retire_batch(statements: HistoryPrepared, cutoff: datetime, rows: int) -> _Batch:
    bound = {"cutoff": cutoff, "batch": rows - 1}
    found, _ = yield Step(_statement(statements, "retention_bound"), bound)
    values: dict[str, Any]
    if found:
        suffix, values = "upto", {"bound_at": found[0][0], "bound_id": found[0][1]}
    else:
        suffix, values = "rest", {"cutoff": cutoff}
    if statements.writable_ctes:
        statement = _statement(statements, f"retire_{suffix}")
        result, _ = yield Step(statement, values, write=True, slow=True)
        return int(result[0][0]), not found

    def retire(run: Run) -> int:
        # Counts, browser families and counter values of the same rows, then the rows:
        # one transaction, so each session is in history or in the aggregates.
        for fold in ("fold", "fold_browsers", "fold_values"):
            run(_statement(statements, f"{fold}_{suffix}"), values)
        _, deleted = run(_statement(statements, f"drop_{suffix}"), values)
        return deleted

    retired: int = yield Transaction(retire)
    return retired, not found


def archive_expired(
    statements: HistoryPrepared,
    now: datetime,
    *,
    count: Callable[[int], None] | None = None,
    stop: StopSignal | None = None,
) -> Operation[int]:
    """Move every row expired at ``now`` to history, batch by batch; return how many."""
    return delete_expired(
        statements,
        now,
        dialect_name=statements.dialect_name,
        count=count,
        stop=stop,
        batch=_archive_batch,
        # A first batch of deletion's size held the writers several times the budget.
        first_rows=START_MOVE_ROWS,
    )


def retire_history(
    statements: HistoryPrepared,
    now: datetime,
    max_age: float,
    *,
    stop: StopSignal | None = None,
) -> Operation[int]:
    """Fold history rows that expired ``max_age`` seconds before ``now`` into the
    aggregates and delete them, batch by batch; return how many went."""
    try:
        cutoff = now - timedelta(seconds=max_age)
    except OverflowError:  # before year 1: nothing is that old
        return 0
    return (
        yield from delete_expired(
            statements, cutoff, dialect_name=statements.dialect_name, stop=stop, batch=_retire_batch
        )
    )


def archive_and_retire(
    statements: HistoryPrepared,
    now: datetime,
    history_max_age: float | None,
    *,
    count: Callable[[int], None] | None = None,
    stop: StopSignal | None = None,
) -> Operation[int]:
    """A cleanup with history: archive what expired, then retire old history; return
    how many rows left the live table."""
    moved = yield from archive_expired(statements, now, count=count, stop=stop)
    if history_max_age is not None and not (stop is not None and stop.is_set()):
        yield from retire_history(statements, now, history_max_age, stop=stop)
    return moved


# -- revival and erasure --------------------------------------------------------------


def revive(
    statements: HistoryPrepared,
    live: Any,
    values: Mapping[str, Any],
    *,
    only_if_expired: bool,
) -> Operation[list[Sequence[Any]]]:
    """Revive ``values["sid"]``: its live or expired row, else its latest archived one
    (taken out of history), else a new session; revivals of expired or archived
    sessions are counted in the aggregates. Returns the live row (none when
    ``only_if_expired`` and a live row is there). ``live`` holds the store's own
    ``revive`` and ``revive_if_expired`` statements."""
    bucketed = {**values, "bucket": bucket_start(values["now"])}
    if statements.writable_ctes:
        # The common case first: the id's row is there (one plain UPDATE). Only
        # without one does the full revival (history, or a new session) run.
        suffix = "_if_expired" if only_if_expired else ""
        existing = _statement(statements, f"revive_existing{suffix}")
        rows, _ = yield Step(existing, values, write=True)
        if not rows:
            rows, _ = yield Step(_statement(statements, f"revive{suffix}"), bucketed, write=True)
            return list(rows)
        if rows[0][-1]:
            # It was expired: a revival, counted in its own statement (a crash just
            # after the revival loses this one count, never a session).
            yield Step(_statement(statements, "count_revival"), bucketed, write=True)
        return [tuple(row[:-1]) for row in rows]

    if not only_if_expired:
        # The common case first: the id's session is live (one UPDATE, on the write
        # path as an increment is). Only without one does the transaction run.
        rows, _ = yield Step(_statement(statements, "revive_live"), values, write=True)
        if rows:
            return list(rows)

    def body(run: Run) -> list[Sequence[Any]]:
        present, _ = run(_statement(statements, "live_expiry"), values)
        if not present:
            restored, _ = run(_statement(statements, "restore"), values)
            if restored:
                run(_statement(statements, "unarchive"), values)
                run(_statement(statements, "count_revival"), bucketed)
                return restored
        upsert = live.revive_if_expired if only_if_expired else live.revive
        rows, _ = run(upsert, values)
        if present and rows and _expired(present[0][0], values["now"]):
            run(_statement(statements, "count_revival"), bucketed)
        return rows

    revived: list[Sequence[Any]] = yield Transaction(body)
    return revived


def recreate(
    statements: HistoryPrepared, create: Any, values: Mapping[str, Any]
) -> Operation[list[Sequence[Any]]]:
    """A new session under ``values["sid"]``, whose id a row holds (the store's first
    insert, ``create_fresh``, found one): an expired row is archived and replaced in
    one transaction (it would otherwise be overwritten and its session lost), a live
    one left alone and no row returned. ``create`` is the store's own statement, which
    replaces an expired row and leaves a live one alone."""
    if statements.writable_ctes:
        rows, _ = yield Step(_statement(statements, "create_archiving"), values, write=True)
        return list(rows)

    def body(run: Run) -> list[Sequence[Any]]:
        # Both take the row only if it is expired: a live one is neither copied nor
        # replaced (and no row comes back).
        run(_statement(statements, "archive_session"), values)
        rows, _ = run(create, values)
        return list(rows)

    created: list[Sequence[Any]] = yield Transaction(body)
    return created


def _expired(stored: Any, now: datetime) -> bool:
    """Whether a raw stored expires_at is at or before ``now``."""
    if isinstance(stored, str):  # SQLite's UTC text
        return datetime.fromisoformat(stored + "+00:00") <= now
    return bool(stored <= now)


def forget(statements: HistoryPrepared, what: str, value: str) -> Operation[int]:
    """Delete every live and archived row whose ``what`` ("user" or "session") is
    ``value``; return how many."""
    key = "uid" if what == "user" else "sid"
    values = {key: value}
    if statements.writable_ctes:
        rows, _ = yield Step(_statement(statements, f"forget_{what}"), values, write=True)
        return int(rows[0][0])

    def body(run: Run) -> int:
        _, live = run(_statement(statements, f"delete_live_{what}"), values)
        _, archived = run(_statement(statements, f"delete_history_{what}"), values)
        return live + archived

    forgotten: int = yield Transaction(body)
    return forgotten
