"""Statements compiled once per store, executed straight on DBAPI connections.

SQLAlchemy builds every statement (:mod:`sauce_sql.statements`) and compiles it once
for the store's dialect; each call then only converts its parameters with the column
types' own bind processors and hands the SQL string to the driver. That keeps the hot
path to the driver's cost plus a few microseconds, with the SQL still written once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

__all__ = ["Prepared", "row_reader"]

_Processor = Callable[[Any], Any]


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> _Processor | None:
    return type_.dialect_impl(dialect).bind_processor(dialect)


def row_reader(
    columns: Sequence[ColumnElement[Any]], dialect: Dialect
) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A function turning a raw driver row of ``columns`` into Python values."""
    processors = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
    if not any(processors):
        return tuple
    pairs = [(i, p) for i, p in enumerate(processors) if p is not None]

    def read(row: Sequence[Any]) -> tuple[Any, ...]:
        values = list(row)
        for i, process in pairs:
            values[i] = process(values[i])
        return tuple(values)

    return read


class Prepared:
    """One statement compiled for one dialect, with its parameters' converters.

    ``parameters(values)`` takes the statement's named runtime parameters and returns
    what the driver wants: a tuple for positional paramstyles (SQLite's ``?``), a dict
    for named ones (psycopg's ``%(name)s``). Literal values SQLAlchemy bound while
    compiling (the ``1`` of ``view_sequence + 1``) are filled in here once.
    """

    __slots__ = ("_constants", "_order", "_positional", "_processors", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect, names: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if "POSTCOMPILE" in compiled.string:
            raise AssertionError(f"statement needs per-call compilation: {compiled.string}")
        self.sql: str = compiled.string
        runtime = set(names)
        binds = compiled.binds
        self._positional = dialect.positional
        self._order = tuple(compiled.positiontup or ()) if self._positional else ()
        self._processors: dict[str, _Processor | None] = {
            name: _bind_processor(binds[name].type, dialect) for name in runtime
        }
        self._constants: dict[str, Any] = {}
        for name in self._order if self._positional else binds:
            if name in runtime or name not in binds:
                continue
            bind = binds[name]
            process = _bind_processor(bind.type, dialect)
            value = bind.effective_value
            self._constants[name] = process(value) if process else value
        unknown = runtime - set(binds)
        if unknown:
            raise AssertionError(f"parameters {sorted(unknown)} are not in: {self.sql}")

    def parameters(self, values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The driver's parameters for one execution."""
        converted = dict(self._constants)
        for name, process in self._processors.items():
            value = values[name]
            converted[name] = process(value) if process is not None else value
        if self._positional:
            return tuple(converted[name] for name in self._order)
        return converted
