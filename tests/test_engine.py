"""Which database drivers the store runs on, and what it says about the others.

The store runs on Python's sqlite3 (``sqlite://``, ``sqlite+pysqlite://``) and on
psycopg 3 (``postgresql://``, ``postgresql+psycopg://``, from the ``postgres`` extra).
Any other driver is refused in the constructor, naming what is supported and what to
install; never told to install an extra that does not provide it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sauce_sql import InvalidInput, Store
from sauce_sql.engine import parse_url

UNSUPPORTED = [
    "postgresql+pg8000://app@db/analytics",
    "postgresql+psycopg2://app@db/analytics",
    "postgresql+asyncpg://app@db/analytics",
    "postgresql+pygresql://app@db/analytics",
    "sqlite+pysqlcipher://:SECRET1@/sessions.db",
    "sqlite+aiosqlite:///sessions.db",
]


@pytest.mark.parametrize("url", UNSUPPORTED)
def test_unsupported_driver_names_what_is_supported(url: str, tmp_path: Path) -> None:
    """A driver the store does not run on is InvalidInput naming it and the supported
    URLs with what to install, without the URL's password; no file is created."""
    driver = url.split("://")[0].split("+")[1]
    with pytest.raises(InvalidInput) as caught:
        Store(url, clean_interval=None)
    message = str(caught.value)
    assert driver in message
    assert "sqlite://" in message
    assert "postgresql://" in message
    assert "postgresql+psycopg://" in message
    assert "psycopg 3" in message
    assert "sauce-sql[postgres]" in message
    assert "SECRET1" not in message
    assert not (tmp_path / "sessions.db").exists()


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite://", "sqlite"),
        ("sqlite+pysqlite:///x.db", "sqlite+pysqlite"),
        ("postgresql://app@db/analytics", "postgresql+psycopg"),
        ("postgresql+psycopg://app@db/analytics", "postgresql+psycopg"),
    ],
)
def test_supported_drivers(url: str, driver: str) -> None:
    """sqlite://, sqlite+pysqlite://, postgresql:// (meaning psycopg 3) and
    postgresql+psycopg:// are taken."""
    assert parse_url(url).drivername == driver


def test_missing_psycopg_says_to_install_the_postgres_extra(tmp_path: Path) -> None:
    """Without psycopg installed, a postgresql:// store says to install psycopg 3 with
    the postgres extra (which does provide it)."""
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as if it were not installed\n"
        "from sauce_sql import InvalidInput, Store\n"
        "try:\n"
        "    Store('postgresql://app@db/analytics', clean_interval=None)\n"
        "except InvalidInput as exc:\n"
        "    print(exc)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    message = completed.stdout.strip()
    assert "psycopg 3" in message
    assert "sauce-sql[postgres]" in message
