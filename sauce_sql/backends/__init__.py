"""The supported databases, each named; any other dialect is refused by name.

Each backend brings its executors (how statements run on its connections) and its
cleanup batch strategy. The rest of the package asks :func:`backend_for` rather than
testing dialect names itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from sauce_sql.backends.postgresql.executor import ServerExecutor
from sauce_sql.backends.sqlite import sharing
from sauce_sql.backends.sqlite.executor import SQLiteExecutor
from sauce_sql.errors import InvalidInput

__all__ = ["BACKENDS", "Backend", "SyncExecutor", "acquire", "backend_for", "release"]

SyncExecutor = SQLiteExecutor | ServerExecutor
"""An executor of the synchronous store."""


@dataclass(frozen=True)
class Backend:
    """What sauce_sql knows of one database."""

    name: str
    #: How long one cleanup batch should take. On SQLite a batch holds the database's
    #: one write lock, so every writer waits behind it: a few milliseconds. On
    #: PostgreSQL writers of live rows do not wait for it, but each batch is a commit
    #: (a WAL flush) of its own, so batches may be larger.
    batch_seconds: float
    #: A server database: its clock is the one clock of every app server, and an
    #: advisory lock lets one app server's cleaner run a round while others skip it.
    server: bool
    #: Whether a cleanup finds its batch's end first (SQLite: one range of the index
    #: then) rather than deleting ``LIMIT``-ed batches.
    bounded_batches: bool
    #: How long a cleanup leaves the write lock free after each batch, as a share of
    #: the batch's time. SQLite's busy handler has a writer of another process sleep
    #: and try again (every 100 ms once it has waited a while), so batches that follow
    #: one another closely keep it out for a whole round; free half the time, it gets
    #: in within a try or two. PostgreSQL's writers do not wait for a batch.
    batch_pause: float = 0.0


BACKENDS = {
    "sqlite": Backend(
        "sqlite", batch_seconds=0.008, server=False, bounded_batches=True, batch_pause=1.0
    ),
    "postgresql": Backend("postgresql", batch_seconds=0.02, server=True, bounded_batches=False),
}


def backend_for(dialect_name: str) -> Backend:
    """The backend of ``dialect_name``; InvalidInput for a database sauce_sql does not
    run on."""
    try:
        return BACKENDS[dialect_name]
    except KeyError:
        raise InvalidInput(
            f"sauce_sql runs on {' and '.join(sorted(BACKENDS))}, not {dialect_name!r}"
        ) from None


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
