"""No password ever shows: not in an error, a log line, get_state().url or the command line.

A database password can be in a URL's userinfo (``user:secret@``), in a query parameter
psycopg logs in with (``?password=secret``, ``?sslpassword=``), or anywhere in a string
that does not parse as a URL at all (a libpq ``host=... password=...`` string). Each
surface is checked for every secret of the URL it was given, whole error chains and
tracebacks included.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _support import admin, wait_for
from conftest import PG_URL, drop_tables, require_postgres

from sauce_sql import InvalidInput, Store, StoreUnavailable
from sauce_sql.errors import unavailable
from sauce_sql.redact import safe_url, scrub, shown

PG = pytest.mark.postgresql
SECRETS = ("SECRET1", "SECRET2", "SECRET3")

# URLs that parse, with the password in each place it can be.
PARSEABLE = [
    pytest.param("postgresql://postgres:SECRET1@127.0.0.1:1/test", id="userinfo"),
    pytest.param("postgresql://postgres@127.0.0.1:1/test?password=SECRET1", id="query"),
    pytest.param(
        "postgresql+psycopg://postgres@127.0.0.1:1/test?sslpassword=SECRET1&password=SECRET2"
        "&password=SECRET3&sslmode=prefer",
        id="query-repeated",
    ),
    pytest.param("postgresql://postgres:SECRET1@127.0.0.1:1/test?password=SECRET2", id="both"),
]
# An "@" of the password left unencoded: SQLAlchemy takes "SECRET2@127.0.0.1" for the
# host, which the driver would then quote in its error.
UNENCODED_AT = "postgresql://postgres:SECRET1@SECRET2@127.0.0.1:1/test"
# Strings that do not parse as URLs, each holding a password.
UNPARSEABLE = [
    pytest.param("host=127.0.0.1 user=postgres password=SECRET1", id="libpq-dsn"),
    pytest.param("host=127.0.0.1 password='SECRET1 SECRET2'", id="libpq-dsn-quoted"),
    pytest.param("postgresql://postgres:SECRET1@127.0.0.1:notaport/test", id="bad-port"),
    # The port's error message would quote "SECRET2@127.0.0.1:5432".
    pytest.param("postgresql://postgres:SECRET1@SECRET2:x@127.0.0.1:5432/test", id="at-port"),
    pytest.param("postgres ql://u@h/db?password=SECRET1", id="space-in-scheme"),
]


def assert_no_secret(text: str) -> None:
    """None of the test's secrets is in ``text``."""
    for secret in SECRETS:
        assert secret not in text, text


def chain(exc: BaseException) -> str:
    """The whole traceback of ``exc``, every chained cause and context included."""
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("url", PARSEABLE)
def test_state_url_hides_every_password(url: str) -> None:
    """get_state().url hides the userinfo password and password-like query parameters,
    for a URL string, a sqlalchemy.URL and an application's engine alike."""
    states = [
        Store(url, clean_interval=None).get_state(),
        Store(sa.make_url(url), clean_interval=None).get_state(),
    ]
    engine = sa.create_engine(url)
    try:
        states.append(Store(engine=engine, clean_interval=None).get_state())
    finally:
        engine.dispose()
    for state in states:
        assert_no_secret(state.url)
        assert "127.0.0.1" in state.url
        assert "***" in state.url


@pytest.mark.parametrize("url", UNPARSEABLE)
def test_unparseable_url_is_refused_without_its_password(url: str) -> None:
    """A URL that does not parse is InvalidInput, whose message (and traceback) shows
    it with its password hidden."""
    with pytest.raises(InvalidInput, match="cannot parse") as caught:
        Store(url, clean_interval=None)
    assert_no_secret(chain(caught.value))


def test_password_with_an_unencoded_at_is_refused() -> None:
    """A URL whose password holds an unencoded "@" is InvalidInput saying to encode it,
    before any connection attempt could quote part of the password as a host name."""
    with pytest.raises(InvalidInput, match="%40") as caught:
        Store(UNENCODED_AT, clean_interval=None)
    assert_no_secret(chain(caught.value))


def test_a_huge_unparseable_url_is_not_echoed_whole() -> None:
    """An 8 KB URL that does not parse gives a message of a few lines, not of 8 KB."""
    with pytest.raises(InvalidInput) as caught:
        Store("postgresql://u@h:" + "9" * 8192 + "x/db", clean_interval=None)
    assert len(str(caught.value)) < 300


@PG
@pytest.mark.parametrize("url", PARSEABLE)
def test_refused_connection_hides_every_password(url: str) -> None:
    """A real StoreUnavailable from a server refusing the connection names the database
    without its password, in its message and in every error chained to it."""
    store = Store(url, clean_interval=None)
    with pytest.raises(StoreUnavailable) as caught:
        store.start()
    store.close()
    assert "127.0.0.1" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert_no_secret(chain(caught.value))


@pytest.fixture
def private_database() -> Iterator[str]:
    """The URL of a database of the test's own on the test server (dropped after)."""
    require_postgres()
    name = f"sauce_redact_{uuid.uuid4().hex[:10]}"
    with admin(PG_URL) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin(PG_URL) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@PG
def test_cleaner_log_and_outage_errors_hide_the_password(
    private_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """When the server starts refusing a running store's connections, the cleaner's log
    lines (tracebacks included) and the errors calls raise name the database without
    the password given as ``?password=``."""
    url = f"{private_database}?password=SECRET1"
    name = sa.make_url(private_database).database
    caplog.set_level(logging.INFO, logger="sauce_sql")
    with Store(url, table_name="sessions", clean_interval=0.05) as store:
        store.new_session("s")
        with admin(PG_URL) as connection:
            connection.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )

        def failures() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage().startswith("cleanup failed")]

        # The first failure may be the killed connection; later ones are refusals.
        wait_for(lambda: len(failures()) >= 3, 30, "the cleaner to log failures")
        errors = []
        for _ in range(2):
            with pytest.raises(StoreUnavailable) as caught:
                store.lookup_session("s")
            errors.append(caught.value)
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert "not currently accepting connections" in logged
    assert "password=***" in logged
    assert_no_secret(logged)
    for error in errors:
        assert "password=***" in str(error)
        assert_no_secret(chain(error))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sauce_sql`` with ``args``."""
    return subprocess.run(
        [sys.executable, "-m", "sauce_sql", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@PG
@pytest.mark.parametrize("command", ["migrate", "cleanup", "report", "demo"])
@pytest.mark.parametrize("url", [PARSEABLE[1], UNENCODED_AT, UNPARSEABLE[0], UNPARSEABLE[3]])
def test_command_line_errors_hide_every_password(command: str, url: str, tmp_path: Path) -> None:
    """A command given a URL it cannot use prints one error line without the password."""
    completed = run_cli(command, "--url", url, cwd=tmp_path)
    assert completed.returncode == 1
    assert completed.stderr.startswith("sauce-sql: error:")
    assert_no_secret(completed.stderr + completed.stdout)


@PG
def test_command_line_output_hides_the_password(tmp_path: Path) -> None:
    """What migrate, cleanup and report print about a database they used hides the
    password of its URL."""
    require_postgres()
    table = f"t_{uuid.uuid4().hex[:12]}"
    url = sa.make_url(PG_URL).update_query_dict({"password": "SECRET1"})
    text = url.render_as_string(hide_password=False)
    try:
        outputs = [
            run_cli(command, "--url", text, "--table-name", table, cwd=tmp_path)
            for command in ("migrate", "cleanup", "report")
        ]
    finally:
        drop_tables(PG_URL, table)
    for completed in outputs:
        assert completed.returncode == 0, completed.stderr
        assert_no_secret(completed.stdout + completed.stderr)
    assert "password=***" in outputs[0].stdout


def test_safe_url_keeps_what_is_not_secret() -> None:
    """safe_url hides passwords only: driver, user, host, port, database and the other
    query parameters stay readable."""
    shown_url = safe_url(
        "postgresql+psycopg://app:SECRET1@db.internal:6432/analytics"
        "?password=SECRET2&sslmode=require&application_name=web"
    )
    assert shown_url == (
        "postgresql+psycopg://app:***@db.internal:6432/analytics"
        "?application_name=web&password=***&sslmode=require"
    )
    assert safe_url("sqlite:///var/lib/sessions.db") == "sqlite:///var/lib/sessions.db"
    assert safe_url("sqlite://") == "sqlite://"


def test_driver_messages_are_scrubbed() -> None:
    """A driver message quoting a connection string loses its password in
    StoreUnavailable, and ordinary messages pass unchanged."""
    quoted = RuntimeError('invalid dsn: "host=db password=SECRET1 user=app"')
    assert_no_secret(str(unavailable("database x is unavailable", quoted)))
    plain = 'duplicate key value violates unique constraint "k" DETAIL: Key (sid)=(a) exists.'
    assert scrub(plain) == plain
    assert scrub("postgresql://app:SECRET1@db/x") == "postgresql://app:***@db/x"


def test_shown_cuts_long_values() -> None:
    """shown quotes short values whole and long ones as a prefix with their length,
    even an int too long to print."""
    assert shown("abc") == "'abc'"
    assert shown("x" * 8192) == repr("x" * 40) + "... (8192 characters)"
    assert len(shown(10**5000)) < 60
