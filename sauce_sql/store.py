"""The synchronous session store."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import URL, Engine, MetaData
from sqlalchemy.exc import SQLAlchemyError

from sauce_sql import history, sharing, statements, validation
from sauce_sql.cleanup import Cleaner, cleanup_round, delete_expired
from sauce_sql.clocks import ServerClock, utc_now
from sauce_sql.config import DEFAULT_HISTORY_MAX_AGE, StoreConfig
from sauce_sql.connections import Executor
from sauce_sql.engine import (
    URL_SHOWN,
    check_application_engine,
    create_store_engine,
    is_memory,
    parse_url,
)
from sauce_sql.errors import (
    InvalidInput,
    SauceSQLError,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
    unavailable,
)
from sauce_sql.models import AnalyticsSession, ReviveSession, SequenceType, StoreState
from sauce_sql.prepared import Prepared, row_reader
from sauce_sql.redact import safe_url, shown
from sauce_sql.schema import sessions_table, store_tables

__all__ = ["Store"]


class _Prepared:
    """The store's statements compiled for its dialect, and the row reader."""

    def __init__(self, engine: Engine, table_name: str) -> None:
        table = sessions_table(table_name)
        built = statements.build(table, engine.dialect.name)
        for field in fields(built):
            names = built.PARAMETERS[field.name]
            setattr(self, field.name, Prepared(getattr(built, field.name), engine.dialect, names))
        self.read_row = row_reader(list(table.c), engine.dialect)

    select_live: Prepared
    exists_live: Prepared
    increment_view: Prepared
    increment_event: Prepared
    assign_user: Prepared
    create: Prepared
    revive: Prepared
    revive_if_expired: Prepared
    delete_expired_batch: Prepared
    expired_bound: Prepared
    delete_expired_upto: Prepared


class Store:
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
        keep_history: bool = True,
        history_max_age: float | None = DEFAULT_HISTORY_MAX_AGE,
        history_ip: str = "mask",
    ) -> None:
        self._config = StoreConfig.create(
            table_name=table_name,
            session_max_age=session_max_age,
            clean_interval=clean_interval,
            clock=clock,
            durability=durability,
            timeout=timeout,
            max_connections=max_connections,
            max_idle_connections=max_idle_connections,
            keep_history=keep_history,
            history_max_age=history_max_age,
            history_ip=history_ip,
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
        self._max_age = timedelta(seconds=self._config.session_max_age)
        self._clock = self._config.clock
        # Where now comes from without an injected clock: set by start().
        self._system_clock: Callable[[], datetime] = utc_now
        self._url = safe_url(self._engine.url)
        self._describe = safe_url(self._engine.url, limit=URL_SHOWN)
        self._lifecycle = threading.Lock()
        self._executor: Executor | None = None
        self._prepared: _Prepared | None = None
        self._history: history.HistoryPrepared | None = None
        self._cleaner: Cleaner | None = None
        self._cleanup_lock = threading.Lock()
        self._last_cleanup_at: datetime | None = None
        self._last_cleanup_deleted: int | None = None
        self._total_cleaned = 0

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
                self._prepared = _Prepared(self._engine, self._config.table_name)
                self._history = history.HistoryPrepared(
                    self._engine.dialect, self._config.table_name, self._config.history_ip
                )
            except (SQLAlchemyError, CommandError, OSError) as exc:
                raise unavailable(f"database {self._describe} is unavailable", exc) from exc
            config = self._config
            self._executor = sharing.acquire(
                self._engine,
                shareable=self._owns_engine,
                durability=config.durability,
                describe=self._describe,
                timeout=config.timeout,
                max_connections=config.max_connections,
                max_idle_connections=config.max_idle_connections,
            )
            if self._engine.dialect.name == "postgresql":
                # One clock for every app server: the database server's (clocks.py).
                server_clock = ServerClock(self._executor.server_now)
                try:
                    server_clock.sync()
                except BaseException:
                    sharing.release(self._executor)
                    self._executor = None
                    raise
                self._system_clock = server_clock
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
                sharing.release(executor)
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

            if not migrate.is_current(self._engine, self._config.table_name):
                migrate.upgrade(self._engine, self._config.table_name)

    # -- operations -----------------------------------------------------------------

    def _started(self) -> tuple[Executor, _Prepared]:
        executor, prepared = self._executor, self._prepared
        if executor is None or prepared is None:
            raise SauceSQLError("the store is not started: call start() or use `with Store(...)`")
        return executor, prepared

    def _now(self) -> datetime:
        if self._clock is None:
            return self._system_clock()
        return validation.aware_utc(self._clock(), "the clock's datetime")

    def _session(self, prepared: _Prepared, row: Any) -> AnalyticsSession:
        return AnalyticsSession(*prepared.read_row(row))

    def new_session(
        self,
        session_id: str | None = None,
        *,
        user_agent: str = "",
        client_ip: str | None = None,
        user_id: str | None = None,
    ) -> AnalyticsSession:
        """Create a live session with both counters at 0 (a random id if none is given).

        Raises SessionExists if a live session has the id; an expired one is replaced.
        """
        sid = uuid.uuid4().hex if session_id is None else validation.session_id(session_id)
        values = self._write_values(sid, user_agent, client_ip, user_id)
        executor, prepared = self._started()
        rows, _ = executor.write(prepared.create, values)
        if not rows:
            raise SessionExists(sid)
        return self._session(prepared, rows[0])

    def lookup_session(self, session_id: str) -> AnalyticsSession | None:
        """The live session with this id, or None."""
        sid = validation.session_id(session_id)
        executor, prepared = self._started()
        values = {"sid": sid, "now": self._now()}
        rows, _ = executor.read(prepared.select_live, values)
        return self._session(prepared, rows[0]) if rows else None

    def session_exists(self, session_id: str) -> bool:
        """Whether a live session has this id."""
        sid = validation.session_id(session_id)
        executor, prepared = self._started()
        values = {"sid": sid, "now": self._now()}
        rows, _ = executor.read(prepared.exists_live, values)
        return bool(rows)

    def inc_sequence(self, session_id: str, type: SequenceType | str) -> int:  # noqa: A002
        """Atomically add 1 to the session's view or event counter; return the new value."""
        sid = validation.session_id(session_id)
        column = validation.sequence_column(type)
        executor, prepared = self._started()
        now = self._now()
        if column == "view_sequence":
            statement = prepared.increment_view
        else:
            statement = prepared.increment_event
        values = {"sid": sid, "now": now, "expires": validation.expiry(now, self._max_age)}
        rows, _ = executor.write(statement, values)
        if not rows:
            raise SessionNotFound(sid)
        return int(rows[0][0])

    def assign_user(self, session_id: str, user_id: str | None) -> None:
        """Set (or with None, clear) the session's user."""
        sid = validation.session_id(session_id)
        uid = validation.user_id(user_id)
        executor, prepared = self._started()
        now = self._now()
        values = {
            "sid": sid,
            "uid": uid,
            "now": now,
            "expires": validation.expiry(now, self._max_age),
        }
        rows, _ = executor.write(prepared.assign_user, values)
        if not rows:
            raise SessionNotFound(sid)

    def revive_session(self, revive: ReviveSession) -> AnalyticsSession:
        """Make the session live under the client's id, keeping any counters it had.

        With ``keep_history``, an id whose session cleanup archived gets that session
        back (counters and created_at kept), as if no cleanup had run.
        """
        values = self._revive_values(revive)
        executor, prepared = self._started()
        rows = self._revive(executor, prepared, values, only_if_expired=False)
        return self._session(prepared, rows[0])

    def _revive(
        self,
        executor: Executor,
        prepared: _Prepared,
        values: dict[str, Any],
        *,
        only_if_expired: bool,
    ) -> list[Any]:
        if self._config.keep_history and self._history is not None:
            return history.revive(
                executor, self._history, prepared, values, only_if_expired=only_if_expired
            )
        statement = prepared.revive_if_expired if only_if_expired else prepared.revive
        rows, _ = executor.write(statement, values)
        return rows

    def maybe_revive_session(self, revive: ReviveSession) -> AnalyticsSession:
        """The live session unchanged if there is one, else ``revive_session(revive)``.

        Safe to race: the revival only writes over a row that is still expired, so
        concurrent callers end with one row and each gets the live session.
        """
        values = self._revive_values(revive)
        executor, prepared = self._started()
        # Two rounds at most are ever needed; the third guards against a row deleted
        # by a cleanup whose clock runs ahead of ours between our two statements.
        for _ in range(3):
            rows, _ = executor.read(prepared.select_live, values)
            if rows:
                return self._session(prepared, rows[0])
            rows = self._revive(executor, prepared, values, only_if_expired=True)
            if rows:
                return self._session(prepared, rows[0])
        raise StoreUnavailable(f"session {shown(revive.session_id)} kept changing under revival")

    def cleanup(self, now: datetime | None = None) -> int:
        """Remove every session expired at ``now`` (default: the clock's now) from the
        live table, in bounded batches; return how many left it.

        With ``keep_history`` (the default) they move to ``<table>_history``, each batch
        in one transaction; then history rows that expired more than
        ``history_max_age`` before ``now`` are folded into ``<table>_aggregates`` and
        deleted, in bounded batches too.
        """
        moment = self._now() if now is None else validation.aware_utc(now, "now")
        return self._delete_expired(moment, stop=None)

    def _delete_expired(self, moment: datetime, stop: threading.Event | None) -> int:
        executor, prepared = self._started()

        done = [0]

        def count(deleted: int) -> None:
            done[0] += deleted

        def clean(stop: threading.Event | None) -> int:
            config, archive = self._config, self._history
            if not config.keep_history or archive is None:
                return delete_expired(executor, prepared, moment, count=count, stop=stop)
            moved = history.archive_expired(executor, archive, moment, count=count, stop=stop)
            if config.history_max_age is not None and not (stop is not None and stop.is_set()):
                history.retire_history(executor, archive, moment, config.history_max_age, stop=stop)
            return moved

        try:
            if stop is None:
                # Called: it removes every expired row, as promised.
                deleted = clean(None)
            else:
                # The background cleaner: when another app server's cleaner is in the
                # middle of a round, this one skips its own.
                with cleanup_round(self._engine, self._config.table_name) as ours:
                    deleted = clean(stop) if ours else 0
        except BaseException:
            # The batches before the failing one did delete rows: count them.
            with self._cleanup_lock:
                self._total_cleaned += done[0]
            raise
        with self._cleanup_lock:
            self._last_cleanup_at = moment
            self._last_cleanup_deleted = deleted
            self._total_cleaned += deleted
        return deleted

    def forget_user(self, user_id: str) -> int:
        """Delete every session of ``user_id``, live and archived (erasure, GDPR art.
        17); return how many rows went. The aggregates hold no user and stay."""
        uid = validation.user_id(user_id)
        if uid is None:
            raise TypeError("user_id must be a str, not NoneType")
        return self._forget("user", uid)

    def forget_session(self, session_id: str) -> int:
        """Delete every row of ``session_id``, live and archived; return how many went."""
        return self._forget("session", validation.session_id(session_id))

    def _forget(self, what: str, value: str) -> int:
        executor, _ = self._started()
        assert self._history is not None
        return history.forget(executor, self._history, what, value)

    def get_state(self) -> StoreState:
        """The store's configuration and what its cleanups did; works at any time."""
        cleaner = self._cleaner
        with self._cleanup_lock:
            return StoreState(
                url=self._url,
                dialect=self._engine.dialect.name,
                table_name=self._config.table_name,
                session_max_age=self._config.session_max_age,
                clean_interval=self._config.clean_interval,
                cleaner_running=cleaner is not None and cleaner.running,
                last_cleanup_at=self._last_cleanup_at,
                last_cleanup_deleted=self._last_cleanup_deleted,
                total_cleaned=self._total_cleaned,
            )

    # -- argument checks ------------------------------------------------------------

    def _write_values(
        self, sid: str, user_agent: object, client_ip: object, user_id: object
    ) -> dict[str, Any]:
        values: dict[str, Any] = {
            "sid": sid,
            "ua": validation.user_agent(user_agent),
            "ip": validation.client_ip(client_ip),
            "uid": validation.user_id(user_id),
        }
        now = self._now()
        values["now"] = now
        values["expires"] = validation.expiry(now, self._max_age)
        return values

    def _revive_values(self, revive: object) -> dict[str, Any]:
        if not isinstance(revive, ReviveSession):
            raise TypeError(f"expected a ReviveSession, not {type(revive).__name__}")
        sid = validation.session_id(revive.session_id)
        return self._write_values(sid, revive.user_agent, revive.client_ip, revive.user_id)
