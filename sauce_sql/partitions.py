"""PostgreSQL: run ``<table>_history`` as monthly range partitions of ``expires_at``.

For large volumes: each month of archived sessions is a table of its own, so an old
month can be detached or dropped whole (far cheaper than deleting its rows, and no
vacuum), and queries on recent months touch only theirs. The store works on the
partitioned table unchanged: cleanup archives into it, revival and erasure find rows
in any partition, and history retention deletes in batches as before.

    from sauce_sql.partitions import partition_history, ensure_partitions
    partition_history(engine, "sessions")        # once: converts, keeps every row
    ensure_partitions(engine, "sessions")        # monthly (cron): the next months

A ``DEFAULT`` partition takes rows of months not created yet, so archiving never
fails; create months ahead of time, because PostgreSQL cannot add a month whose rows
already sit in the default partition.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Connection, Engine, text

from sauce_sql import validation
from sauce_sql.backends import backend_for
from sauce_sql.migrate import migration_transaction
from sauce_sql.schema import USER_INDEX_WHERE, history_table_name

__all__ = ["ensure_partitions", "is_partitioned", "partition_history"]


def _month(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next(month: datetime) -> datetime:
    return (
        month.replace(year=month.year + 1, month=1)
        if month.month == 12
        else month.replace(month=month.month + 1)
    )


def _postgresql(engine: Engine) -> None:
    name = engine.dialect.name
    if not backend_for(name).partitions:
        raise ValueError(f"history partitions are for PostgreSQL, not {name!r}")


def is_partitioned(connection: Connection, table_name: str) -> bool:
    """Whether ``<table_name>_history`` is a partitioned table."""
    found = connection.execute(
        text(
            "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid"
            " WHERE c.relname = :name AND c.relnamespace = current_schema()::regnamespace"
        ),
        {"name": history_table_name(table_name)},
    ).first()
    return found is not None


def _create_months(
    connection: Connection, history: str, first: datetime, last: datetime
) -> list[str]:
    made = []
    month = _month(first)
    while month <= last:
        name = f"{history}_p{month:%Y%m}"
        connection.execute(
            text(
                f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{history}"'
                f" FOR VALUES FROM ('{month.isoformat()}') TO ('{_next(month).isoformat()}')"
            )
        )
        made.append(name)
        month = _next(month)
    return made


def partition_history(
    engine: Engine, table_name: str, *, months_ahead: int = 3, now: datetime | None = None
) -> list[str]:
    """Convert ``<table_name>_history`` into monthly partitions, keeping every row, in
    one transaction; returns the partitions' names. Idempotent: on a partitioned
    history it only adds the months ahead."""
    _postgresql(engine)
    table_name = validation.table_name(table_name)
    history = history_table_name(table_name)
    moment = datetime.now(timezone.utc) if now is None else validation.aware_utc(now, "now")
    ahead = _month(moment)
    for _ in range(months_ahead):
        ahead = _next(ahead)
    with engine.connect() as connection, migration_transaction(connection, table_name):
        if is_partitioned(connection, table_name):
            return _create_months(connection, history, _month(moment), ahead)
        old = f"{history}_unpartitioned"
        oldest = connection.execute(text(f'SELECT min(expires_at) FROM "{history}"')).scalar()
        for statement in (
            f'ALTER TABLE "{history}" RENAME TO "{old}"',
            f'ALTER TABLE "{old}" RENAME CONSTRAINT "pk_{history}" TO "pk_{old}"',
            f'ALTER INDEX "ix_{history}_session_id" RENAME TO "ix_{old}_session_id"',
            f'ALTER INDEX "ix_{history}_user_id" RENAME TO "ix_{old}_user_id"',
            f'CREATE TABLE "{history}" (LIKE "{old}" INCLUDING DEFAULTS)'
            " PARTITION BY RANGE (expires_at)",
            f'ALTER TABLE "{history}" ADD CONSTRAINT "pk_{history}"'
            " PRIMARY KEY (expires_at, session_id)",
            f'CREATE INDEX "ix_{history}_session_id" ON "{history}" (session_id)',
            f'CREATE INDEX "ix_{history}_user_id" ON "{history}" (user_id)'
            f" WHERE {USER_INDEX_WHERE}",
            f'CREATE TABLE "{history}_default" PARTITION OF "{history}" DEFAULT',
        ):
            connection.execute(text(statement))
        made = _create_months(connection, history, oldest or moment, ahead)
        connection.execute(text(f'INSERT INTO "{history}" SELECT * FROM "{old}"'))
        connection.execute(text(f'DROP TABLE "{old}"'))
        return made


def ensure_partitions(
    engine: Engine, table_name: str, *, months_ahead: int = 3, now: datetime | None = None
) -> list[str]:
    """Create the partitions of this month and the next ``months_ahead`` (run it monthly)."""
    return partition_history(engine, table_name, months_ahead=months_ahead, now=now)
