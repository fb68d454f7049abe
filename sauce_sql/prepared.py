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

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import timezone
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Dialect, Select
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

from sauce_sql.backends import backend_for
from sauce_sql.schema import UTCDateTime

__all__ = [
    "Prepared",
    "instance_reader",
    "row_reader",
    "utc_passthrough",
]

_Processor = Callable[[Any], Any]
# A backend's own (bind, result) converters of UTCDateTime values, if it has them.
_Own = tuple[_Processor, _Processor] | None
T = TypeVar("T")
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


def instance_reader(
    columns: Sequence[ColumnElement[Any]], dialect: Dialect, cls: type[T]
) -> Callable[[Sequence[Any]], T]:
    """A function turning a raw driver row of ``columns`` into a ``cls``: a slotted
    dataclass whose fields are the columns, in order, and that has no ``__post_init__``.

    Each lookup builds one such value, and a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__`` after unpacking a list: the function generated
    here unpacks the row once and sets the slots straight, which does the same in
    about half the time.
    """
    names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
    if names != [c.name for c in columns] or getattr(cls, "__post_init__", None):
        raise AssertionError(f"{cls.__name__} does not mirror the columns {names}")
    scope: dict[str, Any] = {"cls": cls, "new": object.__new__}
    lines = [f"def read(row):\n    {', '.join(f'a{i}' for i in range(len(names)))}, = row"]
    lines.append("    made = new(cls)")
    own = _own_datetimes(dialect)
    for i, (name, column) in enumerate(zip(names, columns, strict=True)):
        scope[f"set{i}"] = getattr(cls, name).__set__
        value = f"a{i}"
        process = _result_processor(column.type, dialect, own)
        if process is not None:
            scope[f"process{i}"] = process
            value = f"process{i}({value})"
        lines.append(f"    set{i}(made, {value})")
    lines.append("    return made")
    read: Callable[[Sequence[Any]], T] = _compiled("\n".join(lines), scope, "read")
    return read


def _compiled(source: str, scope: dict[str, Any], name: str) -> Any:
    """The function ``name`` that ``source`` defines, its globals ``scope`` (the way
    dataclasses and namedtuple build theirs: no loop or lookup left at call time)."""
    # The source is built from column and bind parameter names only.
    exec(source, scope)
    return scope[name]


def _parameters_function(
    order: Sequence[str],
    processors: Mapping[str, _Processor | None],
    constants: Mapping[str, Any],
    *,
    positional: bool,
) -> Callable[[Mapping[str, Any]], tuple[Any, ...] | dict[str, Any]]:
    """A function from the named runtime values to the driver's parameters: a tuple in
    ``order`` (positional) or a dict (named), constants filled in. Each runtime value is
    read and converted once, even when the statement uses it twice."""
    scope: dict[str, Any] = {}
    lines = ["def parameters(values):"]
    local: dict[str, str] = {}
    for i, (name, process) in enumerate(processors.items()):
        local[name] = f"v{i}"
        if process is None:
            lines.append(f"    v{i} = values[{name!r}]")
        else:
            scope[f"process{i}"] = process
            lines.append(f"    v{i} = process{i}(values[{name!r}])")
    for i, (name, value) in enumerate(constants.items()):
        scope[f"constant{i}"] = value
        local[name] = f"constant{i}"
    if positional:
        items = "".join(f"{local[name]}, " for name in order)
        lines.append(f"    return ({items})")
    else:
        items = ", ".join(f"{name!r}: {local[name]}" for name in (*constants, *processors))
        lines.append(f"    return {{{items}}}")
    return cast(
        "Callable[[Mapping[str, Any]], tuple[Any, ...] | dict[str, Any]]",
        _compiled("\n".join(lines), scope, "parameters"),
    )


class Prepared:
    """One statement compiled for one dialect, with its parameters' converters.

    ``parameters(values)`` takes the statement's named runtime parameters and returns
    what the driver wants: a tuple for positional paramstyles (SQLite's ``?``), a dict
    for named ones (psycopg's ``%(name)s``). Literal values SQLAlchemy bound while
    compiling (the ``0`` of ``LIMIT ? OFFSET ?``) are filled in once, here.
    """

    __slots__ = (
        "_constants",
        "_order",
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
        self.parameters = _parameters_function(
            order, processors, self._constants, positional=positional
        )
