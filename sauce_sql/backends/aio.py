"""How an asyncio store reaches its database: schema, executor, cleanup rounds.

An :class:`AsyncDatabase` per backend. Schema work (Alembic) is synchronous code: on
a store's own engine it runs in a worker thread, on an application's ``AsyncEngine``
through ``run_sync``; either way the loop goes on. Statements then run on the
backend's asyncio executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import URL, Connection, Dialect, Engine, MetaData
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql.backends import backend_for
from sauce_sql.backends.base import AsyncExecutor
from sauce_sql.backends.postgresql.startup import StartDeadline
from sauce_sql.config import StoreConfig
from sauce_sql.engine import create_store_engine, is_memory, prepare_threshold
from sauce_sql.errors import InvalidInput, unavailable

__all__ = ["AsyncDatabase"]


def _schema_on(connection: Connection, table_name: str, memory: bool, bound: StartDeadline) -> None:
    """Make ``table_name`` current on ``connection`` (a synchronous one), each step
    within ``bound``'s timeout."""
    if memory:
        from sauce_sql.schema import store_tables

        metadata = MetaData()
        store_tables(table_name, metadata)
        metadata.create_all(connection)
        connection.commit()
        return
    from sauce_sql import migrate

    migrate.make_current(connection, table_name, lock_wait=bound.timeout, step=bound.step)


class AsyncDatabase:
    """The database of one asyncio store (see :meth:`create`)."""

    def __init__(
        self, config: StoreConfig, url: URL, dialect: Dialect, engine: Any, own: Engine | None
    ) -> None:
        self.config = config
        self.url = url
        self.dialect = dialect
        #: The application's AsyncEngine, or else the store's own synchronous one.
        self.engine = engine
        #: The synchronous engine the store made for itself (disposed on close), if any.
        self.own = own

    @staticmethod
    def create(url: URL | None, engine: Any, config: StoreConfig) -> AsyncDatabase:
        """The database at ``url``, or of the application's ``AsyncEngine``."""
        if engine is not None:
            from sqlalchemy.ext.asyncio import AsyncEngine

            if not isinstance(engine, AsyncEngine):
                raise TypeError(
                    "engine must be a sqlalchemy.ext.asyncio.AsyncEngine, "
                    f"not {type(engine).__name__}"
                )
            name = backend_for(engine.dialect.name).name
            if name == "sqlite":
                if is_memory(engine.url):
                    raise InvalidInput(
                        "an in-memory SQLite AsyncEngine is a database of its own connection, "
                        "which the store cannot share: give AsyncStore('sqlite://') instead"
                    )
                # The store's statements run on connections of its own (see sqlite/aio.py).
                own = create_store_engine(
                    engine.url.set(drivername="sqlite"),
                    durability=config.durability,
                    timeout=config.timeout,
                )
                return SQLiteDatabase(config, engine.url, own.dialect, engine, own)
            return ServerDatabase(config, engine.url, engine.sync_engine.dialect, engine, None)
        assert url is not None
        name = backend_for(url.get_backend_name()).name
        asyncpg = url.get_driver_name() == "asyncpg"
        # Schema work is synchronous: on psycopg, whichever driver runs the statements.
        schema_url = url.set(drivername="postgresql+psycopg") if asyncpg else url
        own = create_store_engine(schema_url, durability=config.durability, timeout=config.timeout)
        if name == "sqlite":
            return SQLiteDatabase(config, own.url, own.dialect, own, own)
        if asyncpg:
            from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect

            dialect = asyncpg_dialect.dialect()  # type: ignore[no-untyped-call]
            return ServerDatabase(config, url, dialect, own, own)
        return ServerDatabase(config, own.url, own.dialect, own, own)

    async def open(self, describe: str) -> AsyncExecutor:
        """Make the schema current and return an executor for the store."""
        raise NotImplementedError

    async def close(self, executor: AsyncExecutor) -> None:
        """Close ``executor``."""
        await executor.close()

    async def dispose(self) -> None:
        """Dispose of the store's own engine (never an application's)."""
        if self.own is not None:
            await asyncio.to_thread(self.own.dispose)

    @contextlib.asynccontextmanager
    async def cleanup_round(
        self, table_name: str, *, wait: float | None = None
    ) -> AsyncIterator[bool]:
        """Whether this process runs a cleanup round now (see cleanup.cleanup_round:
        ``wait=None`` is the background cleaner's round, a number a called cleanup's)."""
        yield True

    def _deadline(self, engine: Engine, describe: str) -> StartDeadline:
        """Each step of the schema work within the store's timeout (on a server)."""
        return StartDeadline(engine, timeout=self.config.timeout, describe=describe)

    def _schema_error(self, describe: str, exc: BaseException) -> Exception:
        return unavailable(f"database {describe} is unavailable", exc)

    async def _own_schema(self, describe: str, memory: bool) -> None:
        from alembic.util import CommandError

        engine = self.own
        assert engine is not None

        def run() -> None:
            with (
                self._deadline(engine, describe) as bound,
                engine.connect() as connection,
            ):
                _schema_on(connection, self.config.table_name, memory, bound)

        try:
            await asyncio.to_thread(run)
        except (SQLAlchemyError, CommandError, OSError) as exc:
            raise self._schema_error(describe, exc) from exc


class SQLiteDatabase(AsyncDatabase):
    """A SQLite file or in-memory database; the store's own synchronous engine."""

    @contextlib.asynccontextmanager
    async def cleanup_round(
        self, table_name: str, *, wait: float | None = None
    ) -> AsyncIterator[bool]:
        """The file's cleanup lease, as the synchronous store's rounds hold (see
        cleanup.cleanup_round), waited for on the loop."""
        from sauce_sql.backends.sqlite.lease import acleanup_lease

        engine = self.own
        assert engine is not None
        if is_memory(engine.url) or engine.url.database is None:
            yield True
            return
        async with acleanup_lease(engine.url.database, wait=wait) as ours:
            yield ours

    async def open(self, describe: str) -> AsyncExecutor:
        from sauce_sql.backends.sqlite import sharing
        from sauce_sql.backends.sqlite.aio import AsyncSQLiteExecutor

        engine = self.own
        assert engine is not None
        memory = is_memory(engine.url)
        await self._own_schema(describe, memory)
        sync = sharing.acquire(
            engine, shareable=True, durability=self.config.durability, describe=describe
        )
        return AsyncSQLiteExecutor(sync, durability=self.config.durability)


class ServerDatabase(AsyncDatabase):
    """PostgreSQL through psycopg's AsyncConnection."""

    async def open(self, describe: str) -> AsyncExecutor:
        from sauce_sql.backends.postgresql.aio import AsyncpgDriver, AsyncServerExecutor

        if self.own is not None:
            await self._own_schema(describe, memory=False)
        else:
            await self._app_schema(describe)
        config = self.config
        return AsyncServerExecutor(
            self._connect,
            self.dialect,
            describe=describe,
            timeout=config.timeout,
            max_connections=config.max_connections,
            max_idle_connections=config.max_idle_connections,
            driver=AsyncpgDriver() if self._asyncpg else None,
        )

    @property
    def _asyncpg(self) -> bool:
        return self.dialect.driver == "asyncpg"

    async def _app_schema(self, describe: str) -> None:
        from alembic.util import CommandError

        table_name = self.config.table_name
        try:
            # The deadline sees the connections its context opens, in the greenlet of
            # SQLAlchemy's asyncio adapter too.
            with self._deadline(self.engine.sync_engine, describe) as bound:
                async with self.engine.connect() as connection:
                    await connection.run_sync(_schema_on, table_name, False, bound)
        except (SQLAlchemyError, CommandError, OSError) as exc:
            raise self._schema_error(describe, exc) from exc

    async def _connect(self) -> Any:
        """A new psycopg AsyncConnection in autocommit, prepared statements as the
        URL says (none by default: see engine.prepare_threshold)."""
        engine = self.own
        if engine is None:
            # The application's engine: its pool's connect arguments and listeners.
            proxy = await self.engine.raw_connection()
            connection = proxy.driver_connection
            proxy.detach()
            if not self._asyncpg:
                await connection.set_autocommit(True)
                connection.prepare_threshold = prepare_threshold(self.url)
            return connection
        if self._asyncpg:
            return await self._connect_asyncpg()
        import psycopg

        _, params = engine.dialect.create_connect_args(engine.url)
        params.pop("context", None)
        params["prepare_threshold"] = prepare_threshold(self.url)
        params.setdefault("connect_timeout", max(2, min(5, int(self.config.timeout))))
        return await psycopg.AsyncConnection.connect(autocommit=True, **params)

    async def _connect_asyncpg(self) -> Any:
        """A new asyncpg connection. Its statement cache (named prepared statements)
        stays off unless the URL's ``prepare_threshold`` says the pooler takes them:
        see engine.prepare_threshold."""
        import asyncpg

        url = self.url.set(drivername="postgresql").difference_update_query(["prepare_threshold"])
        cache = 0 if prepare_threshold(self.url) is None else 100
        return await asyncpg.connect(
            url.render_as_string(hide_password=False),
            statement_cache_size=cache,
            timeout=max(2, min(5, self.config.timeout)),
        )

    @contextlib.asynccontextmanager
    async def cleanup_round(
        self, table_name: str, *, wait: float | None = None
    ) -> AsyncIterator[bool]:
        """A transaction-scoped advisory lock on a connection of its own, as the
        synchronous store's cleaner holds (see cleanup.cleanup_round); none for a
        called cleanup (``wait`` given), which cleans in any case."""
        if wait is not None:
            yield True
            return
        from sauce_sql.backends.postgresql.aio import AsyncpgDriver, Driver

        driver = AsyncpgDriver() if self._asyncpg else Driver()
        errors: tuple[type[BaseException], ...] = (*driver.error, OSError, asyncio.TimeoutError)
        key = zlib.crc32(f"sauce_sql:cleanup:{table_name}".encode())
        try:
            connection = await asyncio.wait_for(self._connect(), self.config.timeout)
        except errors:
            yield True  # the batches will report what is wrong with the server
            return
        try:
            try:
                await connection.execute("BEGIN")
                if self._asyncpg:
                    got = await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", key)
                else:
                    cursor = await connection.execute(
                        "SELECT pg_try_advisory_xact_lock(%s)", (key,)
                    )
                    got = (await cursor.fetchone())[0]
            except errors:
                yield True  # no transaction to be had (statement pooling): clean anyway
                return
            yield bool(got)
        finally:
            with contextlib.suppress(*errors):
                await driver.close(connection)
