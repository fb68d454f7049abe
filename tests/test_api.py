"""The public surface: the names the contract pins, the error tree, a light import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import sauce_sql
from sauce_sql import (
    InvalidInput,
    SauceSQLError,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
)

CONTRACT_NAMES = {
    "Store",
    "AsyncStore",
    "AnalyticsSession",
    "ReviveSession",
    "StoreState",
    "SequenceType",
    "SauceSQLError",
    "SessionNotFound",
    "SessionExists",
    "InvalidInput",
    "StoreUnavailable",
}


def test_all_is_sorted_and_complete() -> None:
    """sauce_sql.__all__ lists exactly the contract's names, sorted, each importable."""
    assert sauce_sql.__all__ == sorted(sauce_sql.__all__)
    assert set(sauce_sql.__all__) == CONTRACT_NAMES | {"__version__"}
    for name in sauce_sql.__all__:
        assert getattr(sauce_sql, name) is not None


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (SessionNotFound, (SauceSQLError, KeyError)),
        (SessionExists, (SauceSQLError,)),
        (InvalidInput, (SauceSQLError, ValueError)),
        (StoreUnavailable, (SauceSQLError,)),
        (SauceSQLError, (Exception,)),
    ],
)
def test_error_hierarchy(error: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    """Each error subclasses the contract's bases, so callers can catch it either way."""
    for base in bases:
        assert issubclass(error, base)


def test_unrelated_errors_are_not_mixed() -> None:
    """Only SessionNotFound is a KeyError and only InvalidInput a ValueError."""
    assert not issubclass(SessionExists, (KeyError, ValueError))
    assert not issubclass(StoreUnavailable, (KeyError, ValueError))
    assert not issubclass(SessionNotFound, ValueError)
    assert not issubclass(InvalidInput, KeyError)


def test_session_not_found_message_names_the_id() -> None:
    """str(SessionNotFound) is a readable sentence naming the session id."""
    error = SessionNotFound("abc123")
    assert "abc123" in str(error)
    assert str(error) != repr("abc123")


def test_import_stays_light() -> None:
    """`import sauce_sql` loads no database driver, no CLI and no Alembic machinery."""
    code = "import json, sys, sauce_sql; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(output))
    heavy = {
        "psycopg",
        "psycopg2",
        "asyncpg",
        "aiosqlite",
        "greenlet",
        "sqlalchemy.ext.asyncio",
        "sauce_sql.cli",
        "sauce_sql.migrate",
        "argparse",
        "alembic.command",
        "alembic.config",
        "mako",
    }
    assert loaded & heavy == set()
