"""Every driver quirk's entry: URLs and engines. What each backend needs of them (its
drivers, its engine and per-connection setup, its report snapshot) is its own
(:mod:`sauce_sql.backends`); this module asks the registry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from sauce_sql.backends import BACKENDS, backend_for
from sauce_sql.backends.postgresql.dialect import INSTALL_PSYCOPG, prepare_threshold
from sauce_sql.backends.sqlite.dialect import DURABILITY_MODES, is_memory
from sauce_sql.errors import InvalidInput
from sauce_sql.redact import safe_url, scrub, shown

__all__ = [
    "DEFAULT_URL",
    "DURABILITY_MODES",
    "check_application_engine",
    "create_store_engine",
    "is_memory",
    "parse_url",
    "prepare_threshold",
    "snapshot",
]

DEFAULT_URL = "sqlite:///sauce_sql.db"
# How much of a refused URL a message quotes.
URL_SHOWN = 100


_RUNS_ON = (
    "sauce_sql runs on sqlite:// (Python's own sqlite3) and on postgresql:// or "
    f"postgresql+psycopg:// (psycopg 3: {INSTALL_PSYCOPG})"
)


def parse_url(url: str | URL | None, *, asyncio: bool = False) -> URL:
    """The URL to use, ``postgresql://`` meaning psycopg 3; refuses what we cannot serve
    (``asyncio``: the asyncio store's, which also runs ``postgresql+asyncpg://``)."""
    if url is None:
        url = DEFAULT_URL
    if not isinstance(url, (str, URL)):
        raise TypeError(f"url must be a str or sqlalchemy.URL, not {type(url).__name__}")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # Neither error's text is shown: a port's ValueError quotes what follows the
        # host, which may be the rest of a password holding an "@".
        raise InvalidInput(
            f"cannot parse database URL {shown(scrub(str(url)), URL_SHOWN)}: "
            "expected dialect[+driver]://user:password@host:port/database"
        ) from None
    if parsed.host is not None and "@" in parsed.host:
        # The driver would quote the "host" (the password's end) in its errors.
        raise InvalidInput(
            f"cannot use database URL {shown(safe_url(parsed), URL_SHOWN)}: its password "
            "holds an '@'; write it percent-encoded, as %40"
        )
    name, _, driver = parsed.drivername.partition("+")
    backend = BACKENDS.get(name)
    if backend is None:
        raise InvalidInput(f"unsupported database {shown(name)} in URL; {_RUNS_ON}")
    if asyncio and driver in backend.async_drivers:
        return parsed
    if driver == "asyncpg":
        raise InvalidInput(
            "unsupported driver 'asyncpg' for Store: asyncpg is an asyncio driver, which "
            f"AsyncStore runs (postgresql+asyncpg://); {_RUNS_ON}"
        )
    if driver not in backend.drivers:
        raise InvalidInput(
            f"unsupported driver {shown(driver)} for {name} in URL "
            f"{shown(safe_url(parsed), URL_SHOWN)}; {_RUNS_ON}"
        )
    if not driver and backend.default_driver:
        parsed = parsed.set(drivername=f"{name}+{backend.default_driver}")
    return parsed


def check_application_engine(engine: Engine) -> None:
    """Refuse an application's engine the store cannot share between its threads."""
    parse_url(engine.url)  # a dialect the store serves
    if is_memory(engine.url) and not isinstance(engine.pool, StaticPool):
        raise InvalidInput(
            "an in-memory SQLite engine gives each thread its own empty database; create "
            "it with poolclass=StaticPool and connect_args={'check_same_thread': False}"
        )


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one snapshot of the database (for reports)."""
    with backend_for(engine.dialect.name).snapshot(engine) as connection:
        yield connection


def create_store_engine(url: URL, *, durability: str, timeout: float = 10.0) -> Engine:
    """An engine the store owns, with its backend's needs applied."""
    backend = backend_for(url.get_backend_name())
    try:
        return backend.create_engine(url, durability=durability, timeout=timeout)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise InvalidInput(
            f"cannot use database URL {shown(safe_url(url), URL_SHOWN)}: {scrub(str(exc))}"
        ) from None
    except ImportError as exc:
        # parse_url let through only the drivers each backend names.
        raise InvalidInput(f"{backend.missing_driver} ({exc})") from None
