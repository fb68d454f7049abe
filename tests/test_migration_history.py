"""Migration 0002 (history, aggregates, user_id index) on databases that hold sessions.

A database migrated to 0001 and filled with sessions is upgraded in place, used,
downgraded back to 0001 and upgraded again, on a SQLite file and on PostgreSQL; the
in-memory schema (create_all) is checked against the migrations' with ``alembic check``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from conftest import START, Backend, FakeClock, make_backend

from sauce_sql import ReviveSession, Store, migrate
from sauce_sql.engine import create_store_engine, parse_url
from sauce_sql.schema import store_tables

ROWS = 500


@pytest.fixture
def engine(persistent_backend: Backend) -> Iterator[sa.Engine]:
    """An engine on the backend, configured as the store configures its own."""
    engine = create_store_engine(parse_url(persistent_backend.url), durability="normal")
    yield engine
    engine.dispose()


def fill_0001(engine: sa.Engine, table: str) -> list[tuple[object, ...]]:
    """Migrate ``table`` to 0001 and insert sessions with plain SQL, half of them expired."""
    migrate.upgrade(engine, table, "0001")
    live = sa.Table(table, sa.MetaData(), autoload_with=engine)
    rows = [
        {
            "session_id": f"s{n:04d}",
            "user_agent": "Mozilla/5.0 Firefox/132.0",
            "client_ip": "203.0.113.7",
            "user_id": f"u{n % 7}" if n % 3 else None,
            "view_sequence": n % 5,
            "event_sequence": n % 3,
            "created_at": START + timedelta(seconds=n),
            "last_modified": START + timedelta(seconds=n),
            "expires_at": START + timedelta(hours=1 if n % 2 else -1, seconds=n),
        }
        for n in range(ROWS)
    ]
    with engine.begin() as connection:
        connection.execute(live.insert(), rows)
    return contents(engine, table)


def contents(engine: sa.Engine, table: str) -> list[tuple[object, ...]]:
    """Every row of ``table`` as read back, in key order."""
    with engine.connect() as connection:
        result = connection.exec_driver_sql(
            f"SELECT session_id, user_agent, client_ip, user_id, view_sequence,"
            f' event_sequence, created_at, expires_at FROM "{table}" ORDER BY session_id'
        )
        return [tuple(row) for row in result]


def index_columns(engine: sa.Engine, table: str) -> list[list[str | None]]:
    """The column lists of ``table``'s indexes."""
    return sorted(index["column_names"] for index in sa.inspect(engine).get_indexes(table))


def test_upgrade_a_populated_0001_table_in_place_and_back(
    persistent_backend: Backend, engine: sa.Engine
) -> None:
    """0001 -> 0002 keeps every row and adds history, aggregates and the user_id index;
    the store then archives and revives; 0002 -> 0001 keeps the live rows and drops
    only what 0002 added; upgrading again works."""
    table = persistent_backend.table_name
    before = fill_0001(engine, table)
    assert len(before) == ROWS

    migrate.upgrade(engine, table, "0002")
    assert migrate.current(engine, table) == "0002"
    assert contents(engine, table) == before
    names = set(sa.inspect(engine).get_table_names())
    assert {f"{table}_history", f"{table}_aggregates"} <= names
    assert ["user_id"] in index_columns(engine, table)
    assert index_columns(engine, f"{table}_history") == [["session_id"], ["user_id"]]
    migrate.upgrade(engine, table)

    clock = FakeClock(START)
    with Store(engine=engine, table_name=table, clean_interval=None, clock=clock) as store:
        assert store.cleanup() == ROWS // 2  # the expired half, moved to history
        assert store.forget_user("u1") > 0
        revived = store.revive_session(ReviveSession("s0002"))
        assert (revived.view_sequence, revived.event_sequence) == (2, 2)
    live_after = contents(engine, table)
    archived = contents(engine, f"{table}_history")
    assert len(live_after) + len(archived) == ROWS - sum(1 for row in before if row[3] == "u1")

    migrate.downgrade(engine, table, "0001")
    assert migrate.current(engine, table) == "0001"
    names = set(sa.inspect(engine).get_table_names())
    assert f"{table}_history" not in names
    assert f"{table}_aggregates" not in names
    assert index_columns(engine, table) == [["expires_at"]]
    assert contents(engine, table) == live_after

    migrate.upgrade(engine, table)
    assert migrate.current(engine, table) == "0004"
    assert contents(engine, table) == live_after
    migrate.check(engine, table)


def test_two_tables_each_get_their_own_history(
    persistent_backend: Backend, engine: sa.Engine
) -> None:
    """Two session tables in one database each have their own history and aggregates,
    and downgrading one leaves the other's alone."""
    table = persistent_backend.table_name
    other = f"{table}_b"
    try:
        migrate.upgrade(engine, table)
        migrate.upgrade(engine, other)
        names = set(sa.inspect(engine).get_table_names())
        for name in (table, other):
            assert {f"{name}_history", f"{name}_aggregates"} <= names
        migrate.check(engine, table)
        migrate.check(engine, other)
        migrate.downgrade(engine, other, "base")
        names = set(sa.inspect(engine).get_table_names())
        assert f"{other}_history" not in names
        assert f"{table}_history" in names
        migrate.check(engine, table)
    finally:
        with engine.begin() as connection:
            for suffix in ("_history", "_aggregates", "_agg_browsers", "_agg_values", ""):
                name = f"{other}{suffix}"
                connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
            connection.exec_driver_sql(f'DROP TABLE IF EXISTS "alembic_version_{other}"')


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Backend]:
    """A SQLite file backend."""
    yield from make_backend("sqlite_file", tmp_path)


def test_create_all_matches_the_migrations(sqlite_file: Backend) -> None:
    """The tables an in-memory store creates directly are the ones the migrations make:
    `alembic check` finds nothing to generate for them."""
    engine = create_store_engine(parse_url(sqlite_file.url), durability="normal")
    try:
        metadata = sa.MetaData()
        store_tables("sessions", metadata)
        metadata.create_all(engine)
        with engine.connect() as connection:
            config = migrate.make_config("sessions", connection)
            command.stamp(config, "head")
            connection.commit()
        migrate.check(engine, "sessions")
    finally:
        engine.dispose()


def test_upgrade_a_populated_0002_database_to_0003_in_place_and_back(
    persistent_backend: Backend, engine: sa.Engine
) -> None:
    """0002 -> 0003 on a database with live rows, history and aggregates keeps every
    row and adds the browser and value aggregates, which retention then fills; 0003 ->
    0002 drops only those; upgrading again works."""
    table = persistent_backend.table_name
    fill_0001(engine, table)
    migrate.upgrade(engine, table, "0002")
    clock = FakeClock(START)

    def populated() -> dict[str, list[tuple[object, ...]]]:
        with engine.connect() as connection:
            return {
                name: sorted(
                    tuple(row)
                    for row in connection.exec_driver_sql(f'SELECT * FROM "{table}{name}"')
                )
                for name in ("", "_history", "_aggregates")
            }

    # A store would upgrade the schema as it starts: archive and retire by hand, as
    # one at 0002 did (some rows to history, others folded into the aggregates).
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f'INSERT INTO "{table}_history" SELECT * FROM "{table}" WHERE view_sequence = 4'
        )
        connection.exec_driver_sql(f'DELETE FROM "{table}" WHERE view_sequence = 4')
        connection.exec_driver_sql(
            f'INSERT INTO "{table}_aggregates" (bucket_start, sessions, views)'
            f' SELECT min(created_at), count(*), sum(view_sequence) FROM "{table}"'
            f" WHERE view_sequence = 3"
        )
        connection.exec_driver_sql(f'DELETE FROM "{table}" WHERE view_sequence = 3')
    before = populated()
    assert all(before.values())

    migrate.upgrade(engine, table, "0003")
    assert migrate.current(engine, table) == "0003"
    assert populated() == before
    names = set(sa.inspect(engine).get_table_names())
    assert {f"{table}_agg_browsers", f"{table}_agg_values"} <= names
    migrate.upgrade(engine, table)  # on to the head, as a store starting here would
    migrate.check(engine, table)

    with Store(
        engine=engine, table_name=table, clean_interval=None, clock=clock, history_max_age=60
    ) as store:
        clock.advance(3 * 3600)
        store.cleanup()  # archives the rest and retires all history
    with engine.connect() as connection:
        families = connection.exec_driver_sql(
            f'SELECT family, sum(sessions) FROM "{table}_agg_browsers" GROUP BY family'
        ).all()
        left = connection.exec_driver_sql(f'SELECT count(*) FROM "{table}_history"').scalar()
    assert left == 0
    # Every session but those folded at 0002, which left only their counts.
    assert [(family, int(n)) for family, n in families] == [("Firefox", ROWS - ROWS // 5)]
    after = populated()

    migrate.downgrade(engine, table, "0002")
    assert migrate.current(engine, table) == "0002"
    names = set(sa.inspect(engine).get_table_names())
    assert f"{table}_agg_browsers" not in names
    assert f"{table}_agg_values" not in names
    assert populated() == after
    migrate.upgrade(engine, table)
    assert migrate.current(engine, table) == "0004"
    assert populated() == after
    migrate.check(engine, table)


def user_index_predicates(engine: sa.Engine, table: str) -> str | None:
    """The WHERE clause of ``table``'s user_id index as the database keeps it (None
    for a full index)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            sql = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = ?", (f"ix_{table}_user_id",)
            ).scalar_one()
            return sql.split(" WHERE ", 1)[1] if " WHERE " in sql else None
        definition = connection.exec_driver_sql(
            "SELECT pg_get_indexdef(%s::regclass)", (f'"ix_{table}_user_id"',)
        ).scalar_one()
        return definition.split(" WHERE ", 1)[1] if " WHERE " in definition else None


def test_0004_makes_the_user_indexes_partial_on_a_populated_database(
    persistent_backend: Backend, engine: sa.Engine
) -> None:
    """0002 -> 0004 rebuilds both user_id indexes for identified rows only, keeps every
    row, and forget_user still finds a user's live and archived sessions through them;
    0004 -> 0002 makes them full again, rows kept."""
    table = persistent_backend.table_name
    before = fill_0001(engine, table)
    migrate.upgrade(engine, table, "0002")
    # Half the rows archived (the even ids, the expired ones), as cleanup would.
    names = ", ".join((*contents_columns(), "last_modified"))
    even = "substr(session_id, 5) IN ('0', '2', '4', '6', '8')"
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f'INSERT INTO "{table}_history" ({names}) SELECT {names} FROM "{table}" WHERE {even}'
        )
        connection.exec_driver_sql(f'DELETE FROM "{table}" WHERE {even}')
    live_before, history_before = contents(engine, table), contents(engine, f"{table}_history")
    assert user_index_predicates(engine, table) is None

    migrate.upgrade(engine, table)
    assert migrate.current(engine, table) == "0004"
    for name in (table, f"{table}_history"):
        predicate = user_index_predicates(engine, name)
        assert predicate is not None
        assert "user_id IS NOT NULL" in predicate.replace("(", "")
    assert contents(engine, table) == live_before
    assert contents(engine, f"{table}_history") == history_before
    migrate.check(engine, table)
    clock = FakeClock(START)
    with Store(engine=engine, table_name=table, clean_interval=None, clock=clock) as store:
        expected = sum(1 for row in before if row[3] == "u1")
        assert store.forget_user("u1") == expected
    after = contents(engine, table), contents(engine, f"{table}_history")
    assert not any(row[3] == "u1" for rows in after for row in rows)

    migrate.downgrade(engine, table, "0002")
    assert migrate.current(engine, table) == "0002"
    assert user_index_predicates(engine, table) is None
    assert user_index_predicates(engine, f"{table}_history") is None
    assert (contents(engine, table), contents(engine, f"{table}_history")) == after
    migrate.upgrade(engine, table)
    assert migrate.current(engine, table) == "0004"


def contents_columns() -> tuple[str, ...]:
    """The columns :func:`contents` reads, in its order."""
    return (
        "session_id",
        "user_agent",
        "client_ip",
        "user_id",
        "view_sequence",
        "event_sequence",
        "created_at",
        "expires_at",
    )
