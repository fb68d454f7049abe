"""The backend registry: the supported databases are named, every other is refused by
name at each entry point, and no module outside ``sauce_sql/backends`` tells the
dialects apart by their names (so no ``else`` silently means "the other one").

The refused database is a real one: SQLite under a dialect name sauce_sql does not
know, registered with SQLAlchemy here, so each entry point would otherwise work on it.
"""

from __future__ import annotations

import ast
import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.ext.asyncio import create_async_engine

from sauce_sql import AsyncStore, InvalidInput, Store, migrate
from sauce_sql.backends import BACKENDS, backend_for
from sauce_sql.engine import create_store_engine
from sauce_sql.history_statements import build_history
from sauce_sql.schema import sessions_table
from sauce_sql.statements import build

PACKAGE = Path(__file__).resolve().parent.parent / "sauce_sql"
OTHER = "othersql"
DIALECT_NAMES = frozenset(BACKENDS)


class OtherDialect(SQLiteDialect_pysqlite):
    """SQLite under a name sauce_sql does not know."""

    name = OTHER
    supports_statement_cache = True


class AsyncOtherDialect(SQLiteDialect_aiosqlite):
    """aiosqlite under a name sauce_sql does not know."""

    name = OTHER
    supports_statement_cache = True


registry.register(OTHER, __name__, "OtherDialect")
registry.register(f"{OTHER}.aiosqlite", __name__, "AsyncOtherDialect")


def refused(caught: pytest.ExceptionInfo[InvalidInput]) -> None:
    """The error names the refused dialect and the supported ones."""
    message = str(caught.value)
    assert OTHER in message
    assert all(name in message for name in BACKENDS)


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    """A database file no entry point may create."""
    where = tmp_path / "other.db"
    yield where
    assert not where.exists(), "a refused database was touched"


@pytest.fixture
def other_engine(path: Path) -> Iterator[Engine]:
    engine = create_engine(f"{OTHER}:///{path}")
    assert engine.dialect.name == OTHER
    yield engine
    engine.dispose()


def test_the_registry_names_the_supported_dialects() -> None:
    assert set(BACKENDS) == {"sqlite", "postgresql"}
    assert all(backend.name == name for name, backend in BACKENDS.items())
    with pytest.raises(InvalidInput) as caught:
        backend_for(OTHER)
    refused(caught)


def test_store_refuses_an_engine_of_another_dialect(other_engine: Engine) -> None:
    with pytest.raises(InvalidInput) as caught:
        Store(engine=other_engine, clean_interval=None).start()
    assert OTHER in str(caught.value)


def test_store_refuses_a_url_of_another_dialect(path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        Store(f"{OTHER}:///{path}", clean_interval=None)
    assert OTHER in str(caught.value)


def test_async_store_refuses_a_url_of_another_dialect(path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        AsyncStore(f"{OTHER}:///{path}", clean_interval=None)
    assert OTHER in str(caught.value)


def test_async_store_refuses_an_async_engine_of_another_dialect(path: Path) -> None:
    async def scenario() -> None:
        engine = create_async_engine(f"{OTHER}+aiosqlite:///{path}")
        assert engine.dialect.name == OTHER
        try:
            with pytest.raises(InvalidInput) as caught:
                async with AsyncStore(engine=engine, clean_interval=None):
                    pass
            refused(caught)
        finally:
            await engine.dispose()

    asyncio.run(scenario())


@pytest.mark.parametrize("action", ["upgrade", "downgrade", "is_current"])
def test_migrate_refuses_another_dialect(other_engine: Engine, action: str) -> None:
    """Refused before connecting, so no file is created and no table made."""
    with pytest.raises(InvalidInput) as caught:
        getattr(migrate, action)(other_engine, "sessions")
    refused(caught)


def test_make_current_refuses_another_dialect(other_engine: Engine, path: Path) -> None:
    with other_engine.connect() as connection, pytest.raises(InvalidInput) as caught:
        migrate.make_current(connection, "sessions")
    refused(caught)
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT name FROM sqlite_master").fetchall() == []
    path.unlink()  # made by the caller's connection alone


def test_builders_refuse_another_dialect(path: Path) -> None:
    for make in (
        lambda: build(sessions_table(), OTHER),
        lambda: build_history("sessions", OTHER, "mask"),
        lambda: create_store_engine(make_url(f"{OTHER}:///{path}"), durability="normal"),
    ):
        with pytest.raises(InvalidInput) as caught:
            make()
        refused(caught)


# -- no dialect names outside the backends -----------------------------------------

#: Outside the store proper: the benchmark names the databases it measures (its
#: parts and result keys are "sqlite" and "postgresql").
EXEMPT = ("backends", "bench")


def _names_a_dialect(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in DIALECT_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_dialect(element) for element in node.elts)
    return False


def _dialect_tests(tree: ast.AST) -> Iterator[ast.AST]:
    """Comparisons with a dialect's name (``==``, ``!=``, ``in``, ``match``) and
    ``.startswith("postgresql")``-like calls."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            if any(_names_a_dialect(side) for side in [node.left, *node.comparators]):
                yield node
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "endswith") and any(
                _names_a_dialect(argument) for argument in node.args
            ):
                yield node
        elif isinstance(node, ast.match_case) and _names_a_dialect_pattern(node.pattern):
            yield node


def _names_a_dialect_pattern(pattern: ast.pattern) -> bool:
    if isinstance(pattern, ast.MatchValue):
        return _names_a_dialect(pattern.value)
    if isinstance(pattern, ast.MatchOr):
        return any(_names_a_dialect_pattern(p) for p in pattern.patterns)
    return False


def test_no_module_outside_the_backends_tests_a_dialect_name() -> None:
    """What differs between the databases is asked of the registry: a module that
    compared the name itself would quietly treat an unknown dialect as one of them."""
    found = []
    for source in sorted(PACKAGE.rglob("*.py")):
        relative = source.relative_to(PACKAGE)
        if relative.parts[0] in EXEMPT:
            continue
        tree = ast.parse(source.read_text(), filename=str(source))
        found += [f"{relative}:{node.lineno}" for node in _dialect_tests(tree)]  # type: ignore[attr-defined]
    assert not found, f"dialect names tested outside sauce_sql/backends: {found}"


def test_the_guard_sees_each_form() -> None:
    """The check above finds the forms it is meant to find."""
    forms = [
        'dialect == "sqlite"',
        '"postgresql" != name',
        'name in ("sqlite", "mysql")',
        'url.startswith("postgresql")',
        'match name:\n    case "sqlite":\n        pass',
    ]
    for form in forms:
        assert list(_dialect_tests(ast.parse(form))), form
    assert not list(_dialect_tests(ast.parse('backend_for(name).server and x == "other"')))
