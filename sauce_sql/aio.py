"""The asyncio session store: ``Store``'s twin, every operation awaited."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from sqlalchemy import URL

from sauce_sql import ops, validation
from sauce_sql.backends.aio import AsyncDatabase
from sauce_sql.backends.base import AsyncExecutor
from sauce_sql.clocks import AsyncServerClock
from sauce_sql.config import DEFAULT_HISTORY_MAX_AGE, StoreConfig
from sauce_sql.core import StoreCore
from sauce_sql.engine import parse_url
from sauce_sql.errors import InvalidInput, SauceSQLError
from sauce_sql.models import AnalyticsSession, ReviveSession, SequenceType

__all__ = ["AsyncStore"]

logger = logging.getLogger("sauce_sql.cleanup")


class AsyncStore(StoreCore):
    """Analytics sessions kept in a SQL table, for asyncio code; no call blocks the loop.

    >>> async def main() -> int:
    ...     async with AsyncStore("sqlite://") as store:
    ...         session = await store.new_session(user_agent="Mozilla/5.0")
    ...         return await store.inc_sequence(session.session_id, "view")
    >>> asyncio.run(main())
    1

    It takes every option of :class:`~sauce_sql.Store`, with the same defaults. On
    SQLite, statements that cannot wait run on the loop and the rest in a few worker
    threads; ``postgresql://`` runs on psycopg's ``AsyncConnection``. Pass ``engine=``
    to use the application's own ``AsyncEngine``, which the store never disposes.
    Use a store from one event loop.

    A call that is cancelled may still have been applied (at most once: writes are
    never retried).
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        engine: Any = None,
        table_name: str = "sessions",
        session_max_age: float = 3600,
        clean_interval: float | None = 5400,
        clock: Callable[[], datetime] | None = None,
        durability: str = "normal",
        timeout: float = 10.0,
        max_connections: int = 10,
        max_idle_connections: int | None = None,
        lean_expiry: bool = False,
        keep_history: bool = True,
        history_max_age: float | None = DEFAULT_HISTORY_MAX_AGE,
        history_ip: str = "mask",
    ) -> None:
        super().__init__(
            StoreConfig.create(
                table_name=table_name,
                session_max_age=session_max_age,
                clean_interval=clean_interval,
                clock=clock,
                durability=durability,
                timeout=timeout,
                max_connections=max_connections,
                max_idle_connections=max_idle_connections,
                lean_expiry=lean_expiry,
                keep_history=keep_history,
                history_max_age=history_max_age,
                history_ip=history_ip,
            )
        )
        if engine is not None and url is not None:
            raise InvalidInput("give either url or engine, not both")
        self._database = AsyncDatabase.create(
            None if engine is not None else parse_url(url, asyncio=True), engine, self._config
        )
        self._describe_database(self._database.url, self._database.dialect.name)
        self._lifecycle = asyncio.Lock()
        self._executor: AsyncExecutor | None = None
        self._cleaner: asyncio.Task[None] | None = None
        self._stop_cleaner: asyncio.Event | None = None

    @property
    def engine(self) -> Any:
        """The application's ``AsyncEngine`` if one was given, else the synchronous
        Engine the store migrates and reads its dialect with (its statements run on
        connections of the store's own)."""
        return self._database.engine

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> AsyncStore:
        """Bring the schema to the current revision and start the cleaner. Idempotent."""
        async with self._lifecycle:
            if self._executor is not None:
                return self
            executor = await self._database.open(self._describe)
            try:
                self._prepare(self._database.dialect)
                server_now = getattr(executor, "server_now", None)
                if server_now is not None:
                    # One clock for every app server: the database server's (clocks.py).
                    clock = AsyncServerClock(server_now)
                    await clock.sync()
                    self._system_clock = clock
            except BaseException:
                await self._database.close(executor)
                raise
            self._executor = executor
            if self._config.clean_interval is not None:
                self._stop_cleaner = asyncio.Event()
                self._cleaner = asyncio.get_running_loop().create_task(
                    self._clean_every(self._config.clean_interval, self._stop_cleaner),
                    name=f"sauce-sql-cleaner-{self._config.table_name}",
                )
            return self

    async def close(self) -> None:
        """Stop the cleaner and release the store's connections. Idempotent."""
        async with self._lifecycle:
            cleaner, self._cleaner = self._cleaner, None
            if cleaner is not None and self._stop_cleaner is not None:
                self._stop_cleaner.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await cleaner
            executor, self._executor = self._executor, None
            if executor is not None:
                await self._database.close(executor)
            await self._database.dispose()

    async def __aenter__(self) -> AsyncStore:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _started(self) -> AsyncExecutor:
        executor = self._executor
        if executor is None:
            raise SauceSQLError(self._NOT_STARTED)
        return executor

    def _cleaner_running(self) -> bool:
        cleaner = self._cleaner
        return cleaner is not None and not cleaner.done()

    async def _clean_every(self, interval: float, stop: asyncio.Event) -> None:
        """The background cleaner: a cleanup every ``interval`` seconds until stopped.

        A failing cleanup is logged and tried again at the next tick.
        """
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), min(interval, 86_400.0))
            if stop.is_set():
                return
            try:
                deleted = await self._delete_expired(self._now(), stop)
            except Exception:
                logger.exception("cleanup failed; trying again in %s s", interval)
            else:
                logger.log(
                    logging.INFO if deleted else logging.DEBUG,
                    "cleanup deleted %d expired sessions",
                    deleted,
                )

    # -- operations: each the Store's twin with the awaits (test_parity.py) ----------

    async def new_session(
        self,
        session_id: str | None = None,
        *,
        user_agent: str = "",
        client_ip: str | None = None,
        user_id: str | None = None,
    ) -> AnalyticsSession:
        """Create a live session with both counters at 0 (a random id if none is given).

        Raises SessionExists if a live session has the id; an expired one is replaced
        (archived first, with keep_history).
        """
        values = self._creation(session_id, user_agent, client_ip, user_id)
        rows, _ = await self._started().write(self._creating(session_id), values)
        recreating = None if rows else self._recreating(session_id, values)
        if recreating is not None:
            rows = await ops.arun(self._started(), recreating)
        return self._created(rows, values)

    async def lookup_session(self, session_id: str) -> AnalyticsSession | None:
        """The live session with this id, or None."""
        values = self._live_query(session_id)
        rows, _ = await self._started().read(self._statements().select_live, values)
        return self._found(rows)

    async def session_exists(self, session_id: str) -> bool:
        """Whether a live session has this id."""
        values = self._live_query(session_id)
        rows, _ = await self._started().read(self._statements().exists_live, values)
        return bool(rows)

    async def inc_sequence(self, session_id: str, type: SequenceType | str) -> int:  # noqa: A002
        """Atomically add 1 to the session's view or event counter; return the new value."""
        statement, values = self._increment(session_id, type)
        rows, _ = await self._started().write(statement, values)
        return self._incremented(rows, values)

    async def assign_user(self, session_id: str, user_id: str | None) -> None:
        """Set (or with None, clear) the session's user."""
        values = self._assignment(session_id, user_id)
        rows, _ = await self._started().write(self._statements().assign_user, values)
        self._assigned(rows, values)

    async def revive_session(self, revive: ReviveSession) -> AnalyticsSession:
        """Make the session live under the client's id, keeping any counters it had.

        With ``keep_history``, an id whose session cleanup archived gets that session
        back (counters and created_at kept), as if no cleanup had run.
        """
        values = self._revive_values(revive)
        operation = self._revival(values, only_if_expired=False)
        rows = await ops.arun(self._started(), operation)
        return self._session(rows[0])

    async def maybe_revive_session(self, revive: ReviveSession) -> AnalyticsSession:
        """The live session unchanged if there is one, else ``revive_session(revive)``.

        Safe to race: concurrent callers end with one row and each gets the live session.
        """
        values = self._revive_values(revive)
        # The common case as lookup_session's, one read: the session is live.
        rows, _ = await self._started().read(self._statements().select_live, values)
        if rows:
            return self._session(rows[0])
        operation = self._maybe_revive(values)
        return self._revived(await ops.arun(self._started(), operation), values)

    async def cleanup(self, now: datetime | None = None) -> int:
        """Remove every session expired at ``now`` (default: the clock's now) from the
        live table, in bounded batches; return how many left it.

        With ``keep_history`` (the default) they move to ``<table>_history``, each batch
        in one transaction; then history rows that expired more than
        ``history_max_age`` before ``now`` are folded into ``<table>_aggregates`` and
        deleted, in bounded batches too.
        """
        return await self._delete_expired(self._cleanup_moment(now), stop=None)

    async def forget_user(self, user_id: str) -> int:
        """Delete every session of ``user_id``, live and archived (erasure, GDPR art.
        17); return how many rows went. The aggregates hold no user and stay."""
        operation = self._forget("user", self._forget_user_id(user_id))
        return await ops.arun(self._started(), operation)

    async def forget_session(self, session_id: str) -> int:
        """Delete every row of ``session_id``, live and archived; return how many went."""
        operation = self._forget("session", validation.session_id(session_id))
        return await ops.arun(self._started(), operation)

    async def _delete_expired(self, moment: datetime, stop: asyncio.Event | None) -> int:
        executor = self._started()
        operation, done = self._cleanup_operation(moment, stop)
        try:
            # The background cleaner skips its round while another app server's (or
            # process's) is under way; called, a cleanup deletes every expired row, as
            # promised, on a SQLite file once such a round is over (or its timeout).
            wait = None if stop is not None else self._config.timeout
            table = self._config.table_name
            async with self._database.cleanup_round(table, wait=wait) as ours:
                deleted = await ops.arun(executor, operation) if ours else 0
        except BaseException:
            # The batches before the failing one did delete rows: count them.
            self._count_cleaned(done[0])
            raise
        return self._cleaned(moment, deleted)
