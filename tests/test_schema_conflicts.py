"""A table the store cannot use is reported as what it is, not as an outage.

A database whose version table is at a revision this sauce_sql does not know (a newer
one migrated it), a table of the store's name that is another application's (other
columns, or no ``alembic_version_<table>``), a version table whose table was dropped,
and on PostgreSQL a table whose name differs only in case: each makes ``start()`` (and
``sauce-sql migrate``) raise SchemaConflict, naming the table and what to do, and
leaves the database as it was.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _support import table_names
from conftest import Backend, drop_tables

from sauce_sql import Store, StoreUnavailable, migrate
from sauce_sql.errors import SchemaConflict

FOREIGN_DDL = "CREATE TABLE {name} (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"


@pytest.fixture
def table(shared_backend: Backend) -> Iterator[str]:
    """A table name of the test's own on the backend, dropped (with its version table,
    in any case) after."""
    name = f"c_{uuid.uuid4().hex[:12]}"
    yield name
    drop_tables(shared_backend.direct_url, name, name.upper(), name.capitalize())


def execute(url: str, *statements: str) -> None:
    """Run ``statements`` in one transaction on the database itself."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def conflict_on_start(backend: Backend, table: str) -> SchemaConflict:
    """The SchemaConflict a store on ``table`` raises when started."""
    store = Store(backend.url, table_name=table, clean_interval=None)
    with pytest.raises(SchemaConflict) as caught:
        store.start()
    store.close()
    assert isinstance(caught.value, StoreUnavailable)  # code catching outages still works
    assert "unavailable" not in str(caught.value)
    return caught.value


def migrate_line(backend: Backend, table: str, tmp_path: Path) -> str:
    """The one error line ``sauce-sql migrate`` prints for ``table``."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "sauce_sql",
            "migrate",
            "--url",
            backend.direct_url,
            "--table-name",
            table,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert "unavailable" not in lines[0]
    assert "migration failed" not in lines[0]
    return lines[0]


def test_a_newer_revision_is_named(shared_backend: Backend, table: str, tmp_path: Path) -> None:
    """A version table at a revision this sauce_sql does not know names that revision
    and says to upgrade sauce_sql; the table and its rows are left alone."""
    shared_backend.migrate(table)
    with Store(shared_backend.direct_url, table_name=table, clean_interval=None) as store:
        store.new_session("kept")
    engine = sa.create_engine(shared_backend.direct_url)
    try:
        head = migrate.current(engine, table)
    finally:
        engine.dispose()
    execute(shared_backend.direct_url, f"UPDATE alembic_version_{table} SET version_num = '0042'")
    for message in (
        str(conflict_on_start(shared_backend, table)),
        migrate_line(shared_backend, table, tmp_path),
    ):
        assert "'0042'" in message
        assert "upgrade sauce_sql" in message.lower()
        assert table in message
    execute(shared_backend.direct_url, f"UPDATE alembic_version_{table} SET version_num = '{head}'")
    with Store(shared_backend.url, table_name=table, clean_interval=None) as store:
        assert store.session_exists("kept")


def test_another_applications_table_is_named(
    shared_backend: Backend, table: str, tmp_path: Path
) -> None:
    """A table of the store's name without our version table is another application's:
    the error names it and says to choose another table_name; nothing is created."""
    execute(
        shared_backend.direct_url,
        FOREIGN_DDL.format(name=table),
        f"INSERT INTO {table} (id, body) VALUES (1, 'theirs')",
    )
    for message in (
        str(conflict_on_start(shared_backend, table)),
        migrate_line(shared_backend, table, tmp_path),
    ):
        assert repr(table) in message
        assert "another application" in message
        assert "table_name" in message
    assert f"alembic_version_{table}" not in table_names(shared_backend.direct_url)
    engine = sa.create_engine(shared_backend.direct_url)
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql(f"SELECT id, body FROM {table}").all()
    finally:
        engine.dispose()
    assert [tuple(row) for row in rows] == [(1, "theirs")]


def test_a_table_with_other_columns_is_named(shared_backend: Backend, table: str) -> None:
    """A table of the store's name with our version table but not our columns (replaced
    or altered by hand) names the missing columns."""
    shared_backend.migrate(table)
    Store(shared_backend.direct_url, table_name=table, clean_interval=None).start().close()
    execute(shared_backend.direct_url, f"DROP TABLE {table}", FOREIGN_DDL.format(name=table))
    message = str(conflict_on_start(shared_backend, table))
    assert repr(table) in message
    assert "session_id" in message
    assert "expires_at" in message


def test_a_dropped_table_is_named(shared_backend: Backend, table: str) -> None:
    """A version table whose table was dropped by hand says so and what to drop."""
    shared_backend.migrate(table)
    Store(shared_backend.direct_url, table_name=table, clean_interval=None).start().close()
    execute(shared_backend.direct_url, f"DROP TABLE {table}")
    message = str(conflict_on_start(shared_backend, table))
    assert "does not exist" in message
    assert f"alembic_version_{table}" in message


def test_a_table_differing_only_in_case_is_named(shared_backend: Backend, table: str) -> None:
    """A foreign table whose quoted name differs from the store's only in case (made
    under a mixed-case name before names were folded) is named, never doubled by a
    second, empty table: on PostgreSQL as a table to rename to lower case, on SQLite
    (where it is the same table) as another application's."""
    mixed = table.capitalize()
    execute(shared_backend.direct_url, FOREIGN_DDL.format(name=f'"{mixed}"'))
    message = str(conflict_on_start(shared_backend, mixed))
    if shared_backend.dialect == "postgresql":
        assert repr(mixed) in message
        assert "lower case" in message
    else:
        assert "another application" in message
    assert table not in table_names(shared_backend.direct_url)
