"""The synchronous session store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

from sqlalchemy import URL, Engine, MetaData
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql import backends, ops, validation
from sauce_sql.backends import sync
from sauce_sql.backends.sync import SyncExecutor
from sauce_sql.cleanup import Cleaner, cleanup_round
from sauce_sql.clocks import ServerClock
from sauce_sql.config import DEFAULT_HISTORY_MAX_AGE, StoreConfig
from sauce_sql.core import StoreCore
from sauce_sql.engine import (
    check_application_engine,
    create_store_engine,
    is_memory,
    parse_url,
)
from sauce_sql.errors import InvalidInput, SauceSQLError, unavailable
from sauce_sql.models import AnalyticsSession, ReviveSession, SequenceType
from sauce_sql.schema import store_tables

__all__ = ["Store"]


class Store(StoreCore):
    """Analytics sessions kept in a SQL table; safe to share between threads.

    >>> with Store("sqlite://") as store:
    ...     session = store.new_session(user_agent="Mozilla/5.0")
    ...     store.inc_sequence(session.session_id, "view")
    1

    ``url`` defaults to the SQLite file ``sauce_sql.db``; ``sqlite://`` is one in-memory
    database shared by the store's threads; ``postgresql://`` uses psycopg 3. Pass
    ``engine=`` to use the application's own Engine, which the store never disposes.
    See the README for every option.
    """

    def __init__(
        self,
        url: str | URL | None = None,
        *,
        engine: Engine | None = None,
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
        if engine is not None:
            if not isinstance(engine, Engine):
                raise TypeError(f"engine must be a sqlalchemy.Engine, not {type(engine).__name__}")
            check_application_engine(engine)
            self._engine, self._owns_engine = engine, False
        else:
            self._engine = create_store_engine(
                parse_url(url), durability=durability, timeout=self._config.timeout
            )
            self._owns_engine = True
        self._describe_database(self._engine.url, self._engine.dialect.name)
        self._lifecycle = threading.Lock()
        self._executor: SyncExecutor | None = None
        self._cleaner: Cleaner | None = None

    @property
    def engine(self) -> Engine:
        """The Engine the store runs on, for the application's own SQL on the table."""
        return self._engine

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Store:
        """Bring the schema to the current revision and start the cleaner. Idempotent."""
        with self._lifecycle:
            if self._executor is not None:
                return self
            # Alembic loads its command machinery (argparse, mako) on import: keep it
            # out of `import sauce_sql` and pay for it only when a store starts.
            from alembic.util import CommandError

            try:
                self._create_schema()
                self._prepare(self._engine.dialect)
            except (SQLAlchemyError, CommandError, OSError) as exc:
                raise unavailable(f"database {self._describe} is unavailable", exc) from exc
            config = self._config
            executor = sync.acquire(
                self._engine,
                shareable=self._owns_engine,
                durability=config.durability,
                describe=self._describe,
                timeout=config.timeout,
                max_connections=config.max_connections,
                max_idle_connections=config.max_idle_connections,
            )
            if backends.backend_for(self._engine.dialect.name).server:
                # One clock for every app server: the database server's (clocks.py).
                server_clock = ServerClock(executor.server_now)
                try:
                    server_clock.sync()
                except BaseException:
                    sync.release(executor)
                    raise
                self._system_clock = server_clock
            self._executor = executor
            if self._config.clean_interval is not None:
                self._cleaner = Cleaner(
                    lambda stop: self._delete_expired(self._now(), stop),
                    self._config.clean_interval,
                    name=f"sauce-sql-cleaner-{self._config.table_name}",
                )
                self._cleaner.start()
            return self

    def close(self) -> None:
        """Stop the cleaner and release the store's connections. Idempotent."""
        with self._lifecycle:
            cleaner, self._cleaner = self._cleaner, None
            if cleaner is not None:
                cleaner.stop()
            executor, self._executor = self._executor, None
            if executor is not None:
                sync.release(executor)
            if self._owns_engine:
                self._engine.dispose()

    def __enter__(self) -> Store:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _create_schema(self) -> None:
        if is_memory(self._engine.url):
            # A private in-memory database is new at every start: nothing to migrate.
            metadata = MetaData()
            store_tables(self._config.table_name, metadata)
            metadata.create_all(self._engine)
        else:
            from sauce_sql import migrate
            from sauce_sql.backends.postgresql.startup import StartDeadline

            timeout = self._config.timeout
            # Each step (connect, schema check, migration lock, migration) within the
            # timeout, as every call is; a no-op on SQLite, whose busy timeout bounds it.
            with (
                StartDeadline(self._engine, timeout=timeout, describe=self._describe) as bound,
                self._engine.connect() as connection,
            ):
                migrate.make_current(
                    connection, self._config.table_name, lock_wait=timeout, step=bound.step
                )

    def _started(self) -> SyncExecutor:
        executor = self._executor
        if executor is None:
            raise SauceSQLError(self._NOT_STARTED)
        return executor

    def _cleaner_running(self) -> bool:
        cleaner = self._cleaner
        return cleaner is not None and cleaner.running

    # -- operations: each the AsyncStore's twin without the awaits (test_parity.py) --

    def new_session(
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
        rows, _ = self._started().write(self._creating(session_id), values)
        recreating = None if rows else self._recreating(session_id, values)
        if recreating is not None:
            rows = ops.run(self._started(), recreating)
        return self._created(rows, values)

    def lookup_session(self, session_id: str) -> AnalyticsSession | None:
        """The live session with this id, or None."""
        values = self._live_query(session_id)
        rows, _ = self._started().read(self._statements().select_live, values)
        return self._found(rows)

    def session_exists(self, session_id: str) -> bool:
        """Whether a live session has this id."""
        values = self._live_query(session_id)
        rows, _ = self._started().read(self._statements().exists_live, values)
        return bool(rows)

    def inc_sequence(self, session_id: str, type: SequenceType | str) -> int:  # noqa: A002
        """Atomically add 1 to the session's view or event counter; return the new value."""
        statement, values = self._increment(session_id, type)
        rows, _ = self._started().write(statement, values)
        return self._incremented(rows, values)

    def assign_user(self, session_id: str, user_id: str | None) -> None:
        """Set (or with None, clear) the session's user."""
        values = self._assignment(session_id, user_id)
        rows, _ = self._started().write(self._statements().assign_user, values)
        self._assigned(rows, values)

    def revive_session(self, revive: ReviveSession) -> AnalyticsSession:
        """Make the session live under the client's id, keeping any counters it had.

        With ``keep_history``, an id whose session cleanup archived gets that session
        back (counters and created_at kept), as if no cleanup had run.
        """
        values = self._revive_values(revive)
        operation = self._revival(values, only_if_expired=False)
        rows = ops.run(self._started(), operation)
        return self._session(rows[0])

    def maybe_revive_session(self, revive: ReviveSession) -> AnalyticsSession:
        """The live session unchanged if there is one, else ``revive_session(revive)``.

        Safe to race: concurrent callers end with one row and each gets the live session.
        """
        values = self._revive_values(revive)
        # The common case as lookup_session's, one read: the session is live.
        rows, _ = self._started().read(self._statements().select_live, values)
        if rows:
            return self._session(rows[0])
        operation = self._maybe_revive(values)
        return self._revived(ops.run(self._started(), operation), values)

    def cleanup(self, now: datetime | None = None) -> int:
        """Remove every session expired at ``now`` (default: the clock's now) from the
        live table, in bounded batches; return how many left it.

        With ``keep_history`` (the default) they move to ``<table>_history``, each batch
        in one transaction; then history rows that expired more than
        ``history_max_age`` before ``now`` are folded into ``<table>_aggregates`` and
        deleted, in bounded batches too.
        """
        return self._delete_expired(self._cleanup_moment(now), stop=None)

    def forget_user(self, user_id: str) -> int:
        """Delete every session of ``user_id``, live and archived (erasure, GDPR art.
        17); return how many rows went. The aggregates hold no user and stay."""
        operation = self._forget("user", self._forget_user_id(user_id))
        return ops.run(self._started(), operation)

    def forget_session(self, session_id: str) -> int:
        """Delete every row of ``session_id``, live and archived; return how many went."""
        operation = self._forget("session", validation.session_id(session_id))
        return ops.run(self._started(), operation)

    def _delete_expired(self, moment: datetime, stop: threading.Event | None) -> int:
        executor = self._started()
        operation, done = self._cleanup_operation(moment, stop)
        try:
            # The background cleaner skips its round while another app server's (or
            # process's) is under way; called, a cleanup deletes every expired row, as
            # promised, on a SQLite file once such a round is over (or its timeout).
            wait = None if stop is not None else self._config.timeout
            with cleanup_round(self._engine, self._config.table_name, wait=wait) as ours:
                deleted = ops.run(executor, operation) if ours else 0
        except BaseException:
            # The batches before the failing one did delete rows: count them.
            self._count_cleaned(done[0])
            raise
        return self._cleaned(moment, deleted)
