"""The Alembic migrations: up, down and up again, drift, several tables, concurrency.

Every test runs on a SQLite file and on PostgreSQL (a unique table there), through
``sauce_sql.migrate`` and through the real ``alembic`` command with the repository's
alembic.ini, as the contract's "The table" section promises.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.util import CommandError
from conftest import Backend, FakeClock, drop_tables, make_backend

from sauce_sql import Store, migrate
from sauce_sql.engine import create_store_engine, parse_url

REPO = Path(__file__).resolve().parent.parent
ALEMBIC_INI = REPO / "alembic.ini"
ALEMBIC = Path(sys.executable).with_name("alembic")
HEAD = "0004"
COLUMNS = {
    "session_id",
    "user_agent",
    "client_ip",
    "user_id",
    "view_sequence",
    "event_sequence",
    "created_at",
    "last_modified",
    "expires_at",
}
TIME_COLUMNS = ("created_at", "last_modified", "expires_at")
SQLITE_TIME_TEXT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}")


@pytest.fixture
def engine(persistent_backend: Backend) -> Iterator[sa.Engine]:
    """An engine on the backend, configured as the store configures its own."""
    engine = create_store_engine(parse_url(persistent_backend.url), durability="normal")
    yield engine
    engine.dispose()


@pytest.fixture
def backend_table(persistent_backend: Backend) -> str:
    """The backend's table for this test (unique on PostgreSQL, dropped after)."""
    return persistent_backend.table_name


def fresh_table_name(backend: Backend) -> str:
    """A table name no other test (or run) uses on this backend."""
    return f"{backend.table_name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def extra_tables(persistent_backend: Backend) -> Iterator[list[str]]:
    """Names of further tables a test creates; dropped (with version tables) after it."""
    names: list[str] = []
    yield names
    drop_tables(persistent_backend.url, *names)


def tables(engine: sa.Engine) -> set[str]:
    """The names of the tables in the database (the default schema)."""
    return set(sa.inspect(engine).get_table_names())


def version_rows(engine: sa.Engine, table_name: str) -> list[str]:
    """The revisions recorded in ``table_name``'s own Alembic version table."""
    with engine.connect() as connection:
        result = connection.exec_driver_sql(
            f'SELECT version_num FROM "{migrate.version_table(table_name)}"'
        )
        return [row[0] for row in result]


def run_alembic(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``alembic`` command with the repository's alembic.ini; fail on an error."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("SAUCE_SQL_URL", "SAUCE_SQL_TABLE")
    }
    environment.update(env or {})
    completed = subprocess.run(
        [str(ALEMBIC), "-c", str(ALEMBIC_INI), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed


def x_args(backend: Backend, table_name: str) -> list[str]:
    """``-x`` arguments naming the backend's database and ``table_name``."""
    return ["-x", f"url={backend.url}", "-x", f"table_name={table_name}"]


def test_upgrade_downgrade_upgrade_through_the_api(engine: sa.Engine, backend_table: str) -> None:
    """migrate.upgrade creates the table, downgrade to base drops it, upgrade brings it back."""
    assert migrate.current(engine, backend_table) is None
    migrate.upgrade(engine, backend_table)
    assert migrate.current(engine, backend_table) == HEAD
    assert backend_table in tables(engine)

    migrate.downgrade(engine, backend_table, "base")
    assert migrate.current(engine, backend_table) is None
    assert backend_table not in tables(engine)

    migrate.upgrade(engine, backend_table)
    assert migrate.current(engine, backend_table) == HEAD
    assert version_rows(engine, backend_table) == [HEAD]


def test_upgrade_is_idempotent(engine: sa.Engine, backend_table: str) -> None:
    """Upgrading a table already at head changes nothing and raises nothing."""
    migrate.upgrade(engine, backend_table)
    migrate.upgrade(engine, backend_table)
    assert version_rows(engine, backend_table) == [HEAD]


def test_alembic_command_line_with_x_arguments(
    persistent_backend: Backend, engine: sa.Engine, backend_table: str, tmp_path: Path
) -> None:
    """`alembic -x url=... -x table_name=...` upgrades, downgrades and upgrades again."""
    args = x_args(persistent_backend, backend_table)
    run_alembic(*args, "upgrade", "head", cwd=tmp_path)
    assert migrate.current(engine, backend_table) == HEAD
    assert HEAD in run_alembic(*args, "current", cwd=tmp_path).stdout

    run_alembic(*args, "downgrade", "base", cwd=tmp_path)
    assert backend_table not in tables(engine)
    assert migrate.current(engine, backend_table) is None

    run_alembic(*args, "upgrade", "head", cwd=tmp_path)
    assert backend_table in tables(engine)
    assert version_rows(engine, backend_table) == [HEAD]


def test_alembic_command_line_with_environment_variables(
    persistent_backend: Backend, engine: sa.Engine, backend_table: str, tmp_path: Path
) -> None:
    """Without -x, the alembic command takes SAUCE_SQL_URL and SAUCE_SQL_TABLE."""
    env = {"SAUCE_SQL_URL": persistent_backend.url, "SAUCE_SQL_TABLE": backend_table}
    run_alembic("upgrade", "head", cwd=tmp_path, env=env)
    assert migrate.current(engine, backend_table) == HEAD

    run_alembic("downgrade", "base", cwd=tmp_path, env=env)
    assert backend_table not in tables(engine)

    run_alembic("upgrade", "head", cwd=tmp_path, env=env)
    assert backend_table in tables(engine)
    assert not (tmp_path / "sauce_sql.db").exists()  # the ini's default was not used


def test_x_arguments_win_over_environment_variables(
    persistent_backend: Backend,
    engine: sa.Engine,
    backend_table: str,
    extra_tables: list[str],
    tmp_path: Path,
) -> None:
    """-x table_name=... names the table even when SAUCE_SQL_TABLE names another."""
    other = fresh_table_name(persistent_backend)
    extra_tables.append(other)
    env = {"SAUCE_SQL_URL": "sqlite:///not-this.db", "SAUCE_SQL_TABLE": other}
    run_alembic(
        *x_args(persistent_backend, backend_table), "upgrade", "head", cwd=tmp_path, env=env
    )
    assert backend_table in tables(engine)
    assert other not in tables(engine)
    assert not (tmp_path / "not-this.db").exists()


def test_alembic_command_line_defaults_to_the_ini_url_and_sessions(tmp_path: Path) -> None:
    """With neither -x nor environment, alembic migrates table sessions in ./sauce_sql.db."""
    run_alembic("upgrade", "head", cwd=tmp_path)
    database = tmp_path / "sauce_sql.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        assert {"sessions", "alembic_version_sessions"} <= tables(engine)
        assert migrate.current(engine, "sessions") == HEAD
    finally:
        engine.dispose()


ALEMBIC_API = textwrap.dedent(
    """
    import sys
    from alembic import command
    from alembic.config import Config

    config = Config(sys.argv[1])
    command.upgrade(config, "head")
    command.check(config)
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    """
)


def test_alembic_ini_through_the_python_api_without_warnings(
    persistent_backend: Backend, engine: sa.Engine, backend_table: str, tmp_path: Path
) -> None:
    """alembic.config.Config(alembic.ini) drives the commands with warnings as errors."""
    environment = {
        **os.environ,
        "SAUCE_SQL_URL": persistent_backend.url,
        "SAUCE_SQL_TABLE": backend_table,
    }
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", ALEMBIC_API, str(ALEMBIC_INI)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert migrate.current(engine, backend_table) == HEAD


def test_alembic_offline_mode_prints_the_sql(tmp_path: Path) -> None:
    """`alembic upgrade head --sql` prints the DDL for the named table without a database."""
    sql = run_alembic("-x", "table_name=web_sessions", "upgrade", "head", "--sql", cwd=tmp_path)
    assert "CREATE TABLE web_sessions" in sql.stdout
    assert "CREATE INDEX ix_web_sessions_expires_at" in sql.stdout
    assert not (tmp_path / "sauce_sql.db").exists()


def test_alembic_refuses_a_bad_table_name(tmp_path: Path) -> None:
    """The alembic command refuses a table name that is not a plain identifier."""
    completed = subprocess.run(
        [str(ALEMBIC), "-c", str(ALEMBIC_INI), "-x", "table_name=x; DROP", "upgrade", "head"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode != 0
    assert "table_name" in completed.stderr
    assert not (tmp_path / "sauce_sql.db").exists()


def test_check_finds_no_drift(engine: sa.Engine, backend_table: str) -> None:
    """command.check finds nothing to generate for a table at head."""
    migrate.upgrade(engine, backend_table)
    migrate.check(engine, backend_table)


def test_check_command_line_finds_no_drift(
    persistent_backend: Backend, backend_table: str, tmp_path: Path
) -> None:
    """`alembic check` exits 0 for a table at head."""
    args = x_args(persistent_backend, backend_table)
    run_alembic(*args, "upgrade", "head", cwd=tmp_path)
    completed = run_alembic(*args, "check", cwd=tmp_path)
    assert "No new upgrade operations detected" in completed.stdout


def test_check_detects_drift(engine: sa.Engine, backend_table: str) -> None:
    """command.check fails once the table differs from the model (its index dropped)."""
    migrate.upgrade(engine, backend_table)
    with engine.begin() as connection:
        connection.exec_driver_sql(f'DROP INDEX "ix_{backend_table}_expires_at"')
    with pytest.raises(CommandError):
        migrate.check(engine, backend_table)


def test_tables_of_different_names_are_migrated_independently(
    persistent_backend: Backend,
    engine: sa.Engine,
    backend_table: str,
    extra_tables: list[str],
) -> None:
    """Two session tables in one database each keep their own version table."""
    other = fresh_table_name(persistent_backend)
    extra_tables.append(other)
    migrate.upgrade(engine, backend_table)
    migrate.upgrade(engine, other)
    names = tables(engine)
    assert {backend_table, other} <= names
    assert {migrate.version_table(backend_table), migrate.version_table(other)} <= names
    assert "alembic_version" not in names
    migrate.check(engine, backend_table)  # the other table is not drift
    migrate.check(engine, other)

    migrate.downgrade(engine, other, "base")
    assert other not in tables(engine)
    assert migrate.current(engine, other) is None
    assert migrate.current(engine, backend_table) == HEAD

    with Store(engine=engine, table_name=backend_table, clean_interval=None) as store:
        session = store.new_session("kept")
    assert session.session_id == "kept"
    migrate.upgrade(engine, other)
    assert migrate.current(engine, other) == HEAD


def test_store_starts_on_a_table_migrated_by_the_alembic_command(
    persistent_backend: Backend, backend_table: str, tmp_path: Path
) -> None:
    """A store starts on (and uses) a table the alembic command created."""
    run_alembic(*x_args(persistent_backend, backend_table), "upgrade", "head", cwd=tmp_path)
    with Store(persistent_backend.url, table_name=backend_table, clean_interval=None) as store:
        session = store.new_session(user_agent="ua")
        assert store.inc_sequence(session.session_id, "view") == 1


CONCURRENT_MIGRATION = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    from alembic.config import main as alembic
    from sauce_sql import Store, migrate
    from sauce_sql.engine import create_store_engine, parse_url

    how, url, table, ini, go = sys.argv[1:]
    engine = create_store_engine(parse_url(url), durability="normal")
    print("ready", flush=True)
    while not Path(go).exists():
        time.sleep(0.005)
    if how == "api":
        migrate.upgrade(engine, table)
    elif how == "alembic":
        alembic(["-c", ini, "-x", f"url={url}", "-x", f"table_name={table}", "upgrade", "head"])
    else:
        with Store(engine=engine, table_name=table, clean_interval=None) as store:
            store.new_session(f"pid-{os.getpid()}")
    print(migrate.current(engine, table), flush=True)
    engine.dispose()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["api", "alembic", "store"])
def test_concurrent_migrations_of_one_table_from_four_processes(
    persistent_backend: Backend, engine: sa.Engine, backend_table: str, tmp_path: Path, how: str
) -> None:
    """Four processes migrating one table at once end with one table and no error."""
    go = tmp_path / "go"
    argv = [how, persistent_backend.url, backend_table, str(ALEMBIC_INI), str(go)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_MIGRATION, *argv],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        go.touch()  # all four start migrating at once
        outcomes = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for process, (out, err) in zip(processes, outcomes, strict=True):
        assert process.returncode == 0, err
        assert "Traceback" not in err
        assert out.strip() == HEAD
    assert version_rows(engine, backend_table) == [HEAD]
    assert sorted(n for n in tables(engine) if backend_table in n) == sorted(
        [
            backend_table,
            f"{backend_table}_history",
            f"{backend_table}_aggregates",
            f"{backend_table}_agg_browsers",
            f"{backend_table}_agg_values",
            migrate.version_table(backend_table),
        ]
    )
    migrate.check(engine, backend_table)
    if how == "store":
        with engine.connect() as connection:
            count = connection.exec_driver_sql(f'SELECT count(*) FROM "{backend_table}"')
            assert count.scalar_one() == 4


def test_columns_primary_key_and_index(engine: sa.Engine, backend_table: str) -> None:
    """The table has the contract's columns, session_id as its key and an index on expires_at."""
    migrate.upgrade(engine, backend_table)
    inspector = sa.inspect(engine)
    columns = {column["name"]: column for column in inspector.get_columns(backend_table)}
    assert set(columns) == COLUMNS
    assert inspector.get_pk_constraint(backend_table)["constrained_columns"] == ["session_id"]
    indexed = [index["column_names"] for index in inspector.get_indexes(backend_table)]
    assert ["expires_at"] in indexed
    for name in ("session_id", "user_agent", "view_sequence", "event_sequence", *TIME_COLUMNS):
        assert not columns[name]["nullable"], name
    assert columns["client_ip"]["nullable"]
    assert columns["user_id"]["nullable"]


def sqlite_path(backend: Backend) -> str:
    """The file behind a SQLite URL."""
    database = sa.make_url(backend.url).database
    assert database
    return database


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    """A SQLite file, for the properties only SQLite has."""
    yield from make_backend("sqlite_file", tmp_path)


@pytest.fixture
def postgres_backend(tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL with a unique table, for the properties only PostgreSQL has."""
    yield from make_backend("postgresql", tmp_path)


def journal_mode(path: str) -> str:
    """The journal mode a plain sqlite3 connection finds on the file."""
    connection = sqlite3.connect(path)
    try:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        connection.close()


def test_sqlite_file_is_in_wal_mode_after_migrating(sqlite_backend: Backend) -> None:
    """A SQLite file migrated through the API is left in WAL mode."""
    engine = create_store_engine(parse_url(sqlite_backend.url), durability="normal")
    try:
        migrate.upgrade(engine, sqlite_backend.table_name)
    finally:
        engine.dispose()
    assert journal_mode(sqlite_path(sqlite_backend)) == "wal"


def test_sqlite_file_is_in_wal_mode_after_the_alembic_command(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    """A SQLite file migrated by the alembic command is left in WAL mode."""
    args = x_args(sqlite_backend, sqlite_backend.table_name)
    run_alembic(*args, "upgrade", "head", cwd=tmp_path)
    assert journal_mode(sqlite_path(sqlite_backend)) == "wal"


def test_sqlite_file_is_in_wal_mode_under_a_store(sqlite_backend: Backend) -> None:
    """A store's SQLite file runs in WAL mode, seen from another connection."""
    with Store(sqlite_backend.url, clean_interval=None) as store:
        store.new_session("a")
        assert journal_mode(sqlite_path(sqlite_backend)) == "wal"


def test_sqlite_times_are_utc_text_that_sqlite_reads(sqlite_backend: Backend) -> None:
    """SQLite stores times as UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' that datetime() reads."""
    backend_table = sqlite_backend.table_name
    # A clock two hours east of UTC: the stored text must still be UTC.
    east = timezone(timedelta(hours=2))
    clock = FakeClock(datetime(2026, 3, 1, 14, 30, 5, 123456, tzinfo=east))
    with Store(
        sqlite_backend.url,
        table_name=backend_table,
        clean_interval=None,
        clock=clock,
        session_max_age=90,
    ) as store:
        store.new_session("s1")
        clock.advance(0.5)
        store.new_session("s2")
    connection = sqlite3.connect(sqlite_path(sqlite_backend))
    try:
        rows = connection.execute(
            f"SELECT session_id, created_at, typeof(created_at), datetime(created_at),"
            f" expires_at, datetime(expires_at), julianday(expires_at) > julianday(created_at)"
            f" FROM {backend_table} ORDER BY created_at"
        ).fetchall()
        late = connection.execute(
            f"SELECT session_id FROM {backend_table} WHERE expires_at > ?",
            ("2026-03-01 12:31:35.300000",),
        ).fetchall()
    finally:
        connection.close()
    assert rows == [
        (
            "s1",
            "2026-03-01 12:30:05.123456",
            "text",
            "2026-03-01 12:30:05",
            "2026-03-01 12:31:35.123456",
            "2026-03-01 12:31:35",
            1,
        ),
        (
            "s2",
            "2026-03-01 12:30:05.623456",
            "text",
            "2026-03-01 12:30:05",
            "2026-03-01 12:31:35.623456",
            "2026-03-01 12:31:35",
            1,
        ),
    ]
    assert all(SQLITE_TIME_TEXT.fullmatch(row[1]) for row in rows)
    assert late == [("s2",)]  # the text compares in time order


@pytest.mark.postgresql
def test_postgresql_times_are_timestamptz(postgres_backend: Backend, clock: FakeClock) -> None:
    """On PostgreSQL the three time columns are timestamp with time zone, holding the instant."""
    backend_table = postgres_backend.table_name
    engine = create_store_engine(parse_url(postgres_backend.url), durability="normal")
    try:
        check_timestamptz(engine, backend_table, clock)
    finally:
        engine.dispose()


def check_timestamptz(engine: sa.Engine, backend_table: str, clock: FakeClock) -> None:
    """Migrate, write a session at the clock's time and read its times back as timestamptz."""
    migrate.upgrade(engine, backend_table)
    with engine.connect() as connection:
        types: dict[str, str] = dict(
            connection.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_name = :t AND table_schema = current_schema()"
                ),
                {"t": backend_table},
            ).all()
        )
    assert {name: types[name] for name in TIME_COLUMNS} == dict.fromkeys(
        TIME_COLUMNS, "timestamp with time zone"
    )
    with Store(engine=engine, table_name=backend_table, clean_interval=None, clock=clock) as store:
        store.new_session("s1")
    with engine.connect() as connection:
        connection.exec_driver_sql("SET TIME ZONE 'Asia/Tokyo'")
        created = connection.execute(
            sa.text(f'SELECT created_at FROM "{backend_table}"')
        ).scalar_one()
        utc_text = connection.execute(
            sa.text(
                f"SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
                f' FROM "{backend_table}"'
            )
        ).scalar_one()
    assert created == clock.now
    assert utc_text == clock.now.strftime("%Y-%m-%d %H:%M:%S")
