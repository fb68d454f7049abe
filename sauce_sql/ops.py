"""Operations of several statements, written once for both stores.

Each is a generator that yields the :class:`Step` it needs run and is sent back the
step's :data:`~sauce_sql.backends.base.Result`; :func:`run` drives one on a
synchronous executor and :func:`arun` on an asyncio one (as psycopg's
``generators.py`` and ``waiting.py`` do for its protocol). A step's error is raised
by the runner, out of the generator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sauce_sql.backends.base import AsyncExecutor, Executor, Result
from sauce_sql.prepared import Prepared

__all__ = [
    "CHECKPOINT",
    "Operation",
    "Pause",
    "Step",
    "Transaction",
    "arun",
    "maybe_revive",
    "run",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Step:
    """One statement of an operation.

    ``slow``: it may hold SQLite's write lock for milliseconds (a cleanup batch), so
    an asyncio store runs it off the event loop even when the lock is free.
    """

    prepared: Prepared
    values: Mapping[str, Any]
    write: bool = False
    slow: bool = False


@dataclass(frozen=True, slots=True)
class Transaction:
    """Several statements in one SQLite transaction on the write path: ``body(run)``
    runs them (see SQLiteExecutor.transaction); the operation is sent what it returns.
    An asyncio store runs it in a worker thread."""

    body: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Pause:
    """Not a statement: wait ``seconds`` with nothing held if other processes use the
    database (a cleanup lets their writers in between its batches, see
    cleanup.delete_expired)."""

    seconds: float


#: Not a statement: a hint that much was written (see Executor.checkpoint_soon).
CHECKPOINT = Step(None, {})  # type: ignore[arg-type]

Operation = Generator[Step | Transaction | Pause, Any, T]
"""An operation: yields steps, is sent their results, returns its own."""

_NOTHING: Result = ([], 0)


def _others_present(executor: object) -> bool:
    """Whether another process's writers share the executor's database and may wait
    for it (SQLite files only: see sqlite/lease.py)."""
    present = getattr(executor, "others_present", None)
    return present is not None and bool(present())


def run(executor: Executor, operation: Operation[T]) -> T:
    """Drive ``operation`` on a synchronous executor; return what it returns."""
    try:
        step = next(operation)
        while True:
            result: Any
            if isinstance(step, Transaction):
                result = executor.transaction(step.body)  # type: ignore[attr-defined]
            elif isinstance(step, Pause):
                if _others_present(executor):
                    time.sleep(step.seconds)
                result = _NOTHING
            elif step is CHECKPOINT:
                executor.checkpoint_soon()
                result = _NOTHING
            elif step.write:
                result = executor.write(step.prepared, step.values)
            else:
                result = executor.read(step.prepared, step.values)
            step = operation.send(result)
    except StopIteration as done:
        value: T = done.value
        return value


async def arun(executor: AsyncExecutor, operation: Operation[T]) -> T:
    """Drive ``operation`` on an asyncio executor; return what it returns."""
    try:
        step = next(operation)
        while True:
            result: Any
            if isinstance(step, Transaction):
                result = await executor.transaction(step.body)  # type: ignore[attr-defined]
            elif isinstance(step, Pause):
                if _others_present(executor):
                    await asyncio.sleep(step.seconds)
                result = _NOTHING
            elif step is CHECKPOINT:
                executor.checkpoint_soon()
                result = _NOTHING
            elif step.slow:
                result = await executor.write_slow(step.prepared, step.values)
            elif step.write:
                result = await executor.write(step.prepared, step.values)
            else:
                result = await executor.read(step.prepared, step.values)
            step = operation.send(result)
    except StopIteration as done:
        value: T = done.value
        return value


def maybe_revive(
    select_live: Prepared,
    revive_if_expired: Callable[[], Operation[list[Any]]],
    values: Mapping[str, Any],
) -> Operation[Any]:
    """After a read of the live row found none (the caller's, so that the common case
    is that one read): the row revived over an expired one (or created), else the
    live row another caller made meanwhile; None if the row kept changing under it.

    Safe to race: the revival only writes over a row that is still expired, so
    concurrent callers end with one row and each gets the live session.
    """
    # Two rounds at most are ever needed; the third guards against a row deleted by a
    # cleanup whose clock runs ahead of ours between our two statements.
    for round_ in range(3):
        if round_:
            rows, _ = yield Step(select_live, values)
            if rows:
                return rows[0]
        rows = yield from revive_if_expired()
        if rows:
            return rows[0]
    return None


def single(prepared: Prepared, values: Mapping[str, Any]) -> Operation[list[Any]]:
    """One write as an operation; its rows."""
    rows, _ = yield Step(prepared, values, write=True)
    return list(rows)
