"""The synchronous store's executors, per backend (:mod:`.aio` is the asyncio one's)."""

from __future__ import annotations

from sqlalchemy import Engine

from sauce_sql.backends import backend_for
from sauce_sql.backends.postgresql.executor import ServerExecutor
from sauce_sql.backends.sqlite import sharing
from sauce_sql.backends.sqlite.executor import SQLiteExecutor

__all__ = ["SyncExecutor", "acquire", "release"]

SyncExecutor = SQLiteExecutor | ServerExecutor
"""An executor of the synchronous store."""


def acquire(
    engine: Engine,
    *,
    shareable: bool,
    durability: str,
    describe: str,
    timeout: float,
    max_connections: int,
    max_idle_connections: int | None,
) -> SyncExecutor:
    """The executor for a store on ``engine`` (a SQLite file's shared one when
    ``shareable``: see :mod:`~sauce_sql.backends.sqlite.sharing`)."""
    name = backend_for(engine.dialect.name).name
    if name == "sqlite":
        return sharing.acquire(
            engine, shareable=shareable, durability=durability, describe=describe
        )
    return ServerExecutor(
        engine,
        describe=describe,
        timeout=timeout,
        max_connections=max_connections,
        max_idle_connections=max_idle_connections,
    )


def release(executor: SyncExecutor) -> None:
    """A store is done with ``executor``."""
    if isinstance(executor, SQLiteExecutor):
        sharing.release(executor)
    else:
        executor.close()
