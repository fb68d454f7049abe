"""Statements compiled once per store, executed straight on DBAPI connections.

SQLAlchemy builds every statement (:mod:`sauce_sql.statements`) and compiles it once
for the store's dialect; each call then only converts its parameters and hands the SQL
string to the driver. That keeps the hot path to the driver's cost plus a few
microseconds, with the SQL still written once.

Parameters and results go through the column types' own processors, except the
:class:`~sauce_sql.schema.UTCDateTime` columns. A backend may bring its own converters
of those (``Backend.datetimes``: SQLite's, which do SQLAlchemy's text formatting and
parsing with ``isoformat`` and ``fromisoformat``, to the byte). Elsewhere the driver
takes and gives aware datetimes, and :func:`utc_passthrough` lets those already in UTC
through without the decorator's call chain and ``astimezone``, about a microsecond a
row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timezone
from operator import itemgetter
from typing import Any

from sqlalchemy import ColumnElement, Dialect, Select
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

from sauce_sql.backends import backend_for
from sauce_sql.schema import UTCDateTime

__all__ = [
    "Prepared",
    "row_reader",
    "utc_passthrough",
]

_Processor = Callable[[Any], Any]
# A backend's own (bind, result) converters of UTCDateTime values, if it has them.
_Own = tuple[_Processor, _Processor] | None
_UTC = timezone.utc


def utc_passthrough(process: _Processor) -> _Processor:
    """``process`` (the type's own converter) for all but UTC datetimes, kept as they are.

    What the store binds and what its connections load are in the ``timezone.utc``
    singleton already, so the identity test almost always answers; anything else
    (another zone, None) gets the full conversion.
    """

    def convert(value: Any) -> Any:
        if getattr(value, "tzinfo", None) is _UTC:
            return value
        return process(value)

    return convert


def _own_datetimes(dialect: Dialect) -> _Own:
    """The backend's own converters of UTCDateTime values on ``dialect``, if any."""
    own = backend_for(dialect.name).datetimes
    return None if own is None else own(dialect)


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect, own: _Own) -> _Processor | None:
    if own is not None and isinstance(type_, UTCDateTime):
        return own[0]
    process = type_.dialect_impl(dialect).bind_processor(dialect)
    if process is not None and _passes_datetimes(type_, dialect):
        return utc_passthrough(process)
    return process


def _result_processor(type_: TypeEngine[Any], dialect: Dialect, own: _Own) -> _Processor | None:
    if own is not None and isinstance(type_, UTCDateTime):
        return own[1]
    process = type_.dialect_impl(dialect).result_processor(dialect, None)
    if process is not None and _passes_datetimes(type_, dialect):
        return utc_passthrough(process)
    return process


def _passes_datetimes(type_: TypeEngine[Any], dialect: Dialect) -> bool:
    """Whether ``type_`` is a UTCDateTime over a driver that takes and gives datetimes
    as they are (psycopg, say): then only the decorator's UTC handling is left to skip."""
    if not isinstance(type_, UTCDateTime):
        return False
    impl = type_.impl_instance.dialect_impl(dialect)
    return impl.bind_processor(dialect) is None and impl.result_processor(dialect, None) is None


def row_reader(
    columns: Sequence[ColumnElement[Any]], dialect: Dialect
) -> Callable[[Sequence[Any]], Sequence[Any]]:
    """A function turning a raw driver row of ``columns`` into Python values."""
    own = _own_datetimes(dialect)
    processors = [_result_processor(c.type, dialect, own) for c in columns]
    if not any(processors):
        return tuple
    pairs = tuple((i, p) for i, p in enumerate(processors) if p is not None)

    def read(row: Sequence[Any]) -> Sequence[Any]:
        values = list(row)
        for i, process in pairs:
            values[i] = process(values[i])
        return values

    return read


class Prepared:
    """One statement compiled for one dialect, with its parameters' converters.

    ``parameters(values)`` takes the statement's named runtime parameters and returns
    what the driver wants: a tuple for positional paramstyles (SQLite's ``?``), a dict
    for named ones (psycopg's ``%(name)s``). Literal values SQLAlchemy bound while
    compiling (the ``0`` of ``LIMIT ? OFFSET ?``) are filled in once, here.
    """

    __slots__ = (
        "_constants",
        "_converted",
        "_order",
        "_pick",
        "_plain",
        "parameters",
        "returns_rows",
        "sql",
    )

    def __init__(self, statement: ClauseElement, dialect: Dialect, names: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if "POSTCOMPILE" in compiled.string:
            raise AssertionError(f"statement needs per-call compilation: {compiled.string}")
        self.sql: str = compiled.string
        #: Whether the driver hands back rows (a SELECT, or RETURNING).
        self.returns_rows = isinstance(statement, Select) or bool(compiled.effective_returning)
        binds = compiled.binds
        unknown = set(names) - set(binds)
        if unknown:
            raise AssertionError(f"parameters {sorted(unknown)} are not in: {self.sql}")
        own = _own_datetimes(dialect)
        processors = {name: _bind_processor(binds[name].type, dialect, own) for name in names}
        # Values needing no conversion are copied as they are; converting each name
        # once matters because a statement may use ``now`` twice.
        self._plain = tuple(name for name, process in processors.items() if process is None)
        self._converted = tuple((n, p) for n, p in processors.items() if p is not None)
        self._constants: dict[str, Any] = {}
        positional = dialect.positional
        order = tuple(compiled.positiontup or ()) if positional else tuple(binds)
        for name in order:
            if name in processors:
                continue
            bind = binds[name]
            process = _bind_processor(bind.type, dialect, own)
            value = bind.effective_value
            self._constants[name] = process(value) if process else value
        self._order = order
        self.parameters: Callable[[Mapping[str, Any]], tuple[Any, ...] | dict[str, Any]]
        """The driver's parameters for one execution of the statement."""
        self.parameters = self._positional if positional else self._convert
        self._pick: Callable[[dict[str, Any]], Any] = itemgetter(*order) if order else tuple

    def _positional(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        picked = self._pick(self._convert(values))
        # itemgetter of one name returns the value itself, not a 1-tuple.
        return picked if len(self._order) != 1 else (picked,)

    def _convert(self, values: Mapping[str, Any]) -> dict[str, Any]:
        converted = self._constants.copy()
        for name in self._plain:
            converted[name] = values[name]
        for name, process in self._converted:
            converted[name] = process(values[name])
        return converted
