"""What ``Store`` and ``AsyncStore`` share: options, the clock, values, rows to sessions.

Nothing here does I/O. Each store's public method is these steps around one awaited
(or not) call of its executor, so the two stores differ only by ``await``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import URL, Dialect

from sauce_sql import history, ops, statements, validation
from sauce_sql.cleanup import StopSignal, delete_expired
from sauce_sql.clocks import utc_now
from sauce_sql.config import StoreConfig
from sauce_sql.engine import URL_SHOWN
from sauce_sql.errors import SauceSQLError, SessionExists, SessionNotFound, StoreUnavailable
from sauce_sql.models import AnalyticsSession, ReviveSession, SequenceType, StoreState
from sauce_sql.ops import Operation
from sauce_sql.prepared import Prepared, instance_reader, row_reader
from sauce_sql.redact import safe_url, shown
from sauce_sql.schema import sessions_table

__all__ = ["PreparedStatements", "StoreCore"]


class PreparedStatements:
    """The store's statements compiled for its dialect, and the row readers."""

    def __init__(self, dialect: Dialect, config: StoreConfig) -> None:
        table = sessions_table(config.table_name)
        built = statements.build(table, dialect.name, lean_expiry=config.lean_expiry)
        for field in fields(built):
            names = built.PARAMETERS[field.name]
            setattr(self, field.name, Prepared(getattr(built, field.name), dialect, names))
        self.read_row = row_reader(list(table.c), dialect)
        self.read_session = instance_reader(list(table.c), dialect, AnalyticsSession)

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


#: What compiled statements depend on: the dialect's class (driver and paramstyle with
#: it), what of an instance changes the SQL it writes, and the store's options used in
#: the statements.
_Key = tuple[Any, ...]
_COMPILED: dict[_Key, tuple[PreparedStatements, history.HistoryPrepared]] = {}
#: Beyond this many tables and option sets, the oldest compiled set is forgotten.
_COMPILED_LIMIT = 64
# Stores start in many threads at once: forgetting the oldest set iterates the dict,
# which another thread's insert would break.
_COMPILED_LOCK = threading.Lock()


def _compiled_for(
    dialect: Dialect, config: StoreConfig
) -> tuple[PreparedStatements, history.HistoryPrepared]:
    """The statements of a store of ``config`` on ``dialect``, compiled once per process
    and shared: compiling them is most of a start's work, and nothing changes a
    compiled statement after it is built."""
    key = (
        type(dialect),
        dialect.paramstyle,
        dialect.server_version_info,
        dialect.max_identifier_length,
        dialect.label_length,
        config.table_name,
        config.lean_expiry,
        config.history_ip,
    )
    found = _COMPILED.get(key)
    if found is None:
        found = (
            PreparedStatements(dialect, config),
            history.HistoryPrepared(dialect, config.table_name, config.history_ip),
        )
        with _COMPILED_LOCK:
            if len(_COMPILED) >= _COMPILED_LIMIT:
                # Dicts keep insertion order: the first key is the oldest.
                _COMPILED.pop(next(iter(_COMPILED)), None)
            _COMPILED[key] = found
    return found


class StoreCore:
    """The I/O-free half of a store."""

    _NOT_STARTED = "the store is not started: call start() or use `with Store(...)`"

    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._max_age = timedelta(seconds=config.session_max_age)
        self._clock = config.clock
        # Where now comes from without an injected clock: set by start().
        self._system_clock: Callable[[], datetime] = utc_now
        self._prepared: PreparedStatements | None = None
        self._history: history.HistoryPrepared | None = None
        self._cleanup_lock = threading.Lock()
        self._last_cleanup_at: datetime | None = None
        self._last_cleanup_deleted: int | None = None
        self._total_cleaned = 0
        self._url = ""
        self._describe = ""
        self._dialect_name = ""

    def _describe_database(self, url: URL, dialect_name: str) -> None:
        self._url = safe_url(url)
        self._describe = safe_url(url, limit=URL_SHOWN)
        self._dialect_name = dialect_name

    def _now(self) -> datetime:
        if self._clock is None:
            return self._system_clock()
        return validation.aware_utc(self._clock(), "the clock's datetime")

    def _statements(self) -> PreparedStatements:
        prepared = self._prepared
        if prepared is None:
            raise SauceSQLError(self._NOT_STARTED)
        return prepared

    # -- values in, sessions out ----------------------------------------------------

    def _creation(
        self, session_id: str | None, user_agent: object, client_ip: object, user_id: object
    ) -> dict[str, Any]:
        sid = uuid.uuid4().hex if session_id is None else validation.session_id(session_id)
        return self._write_values(sid, user_agent, client_ip, user_id)

    def _creating(self, session_id: str | None) -> Prepared:
        """The creation's first statement. With keep_history and a given id, an insert
        that leaves any row of the id alone (see :meth:`_recreating`); a random id,
        which no row has, or no history: the creation that replaces an expired row."""
        if session_id is not None and self._config.keep_history and self._history is not None:
            return self._history.create_fresh
        return self._statements().create

    def _recreating(
        self, session_id: str | None, values: dict[str, Any]
    ) -> ops.Operation[list[Any]] | None:
        """After a first insert that found a row under the given id: the creation that
        archives that row first if it is expired (None without history)."""
        if session_id is None or not self._config.keep_history or self._history is None:
            return None
        return history.recreate(self._history, self._statements().create, values)

    def _created(self, rows: Sequence[Any], values: dict[str, Any]) -> AnalyticsSession:
        if not rows:
            raise SessionExists(values["sid"])
        return self._session(rows[0])

    def _live_query(self, session_id: str) -> dict[str, Any]:
        return {"sid": validation.session_id(session_id), "now": self._now()}

    def _found(self, rows: Sequence[Any]) -> AnalyticsSession | None:
        return self._session(rows[0]) if rows else None

    def _increment(
        self,
        session_id: str,
        type: SequenceType | str,  # noqa: A002
    ) -> tuple[Prepared, dict[str, Any]]:
        sid = validation.session_id(session_id)
        column = validation.sequence_column(type)
        prepared = self._statements()
        now = self._now()
        statement = (
            prepared.increment_view if column == "view_sequence" else prepared.increment_event
        )
        return statement, {"sid": sid, "now": now, "expires": validation.expiry(now, self._max_age)}

    def _incremented(self, rows: Sequence[Any], values: dict[str, Any]) -> int:
        if not rows:
            raise SessionNotFound(values["sid"])
        return int(rows[0][0])

    def _assignment(self, session_id: str, user_id: str | None) -> dict[str, Any]:
        sid = validation.session_id(session_id)
        uid = validation.user_id(user_id)
        now = self._now()
        return {
            "sid": sid,
            "uid": uid,
            "now": now,
            "expires": validation.expiry(now, self._max_age),
        }

    def _assigned(self, rows: Sequence[Any], values: dict[str, Any]) -> None:
        if not rows:
            raise SessionNotFound(values["sid"])

    def _session(self, row: Any) -> AnalyticsSession:
        return self._statements().read_session(row)

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

    def _prepare(self, dialect: Dialect) -> None:
        """Compile the store's statements for ``dialect`` (at start), or take those of
        an earlier store of the same table, dialect and options."""
        self._prepared, self._history = _compiled_for(dialect, self._config)

    def _revival(self, values: dict[str, Any], *, only_if_expired: bool) -> Operation[list[Any]]:
        """Revive ``values["sid"]`` (from history too, with keep_history); the live row."""
        prepared = self._statements()
        if self._config.keep_history and self._history is not None:
            return history.revive(self._history, prepared, values, only_if_expired=only_if_expired)
        statement = prepared.revive_if_expired if only_if_expired else prepared.revive
        return ops.single(statement, values)

    def _maybe_revive(self, values: dict[str, Any]) -> Operation[Any]:
        """maybe_revive_session once its read found no live row."""
        prepared = self._statements()

        def revive_if_expired() -> Operation[list[Any]]:
            return self._revival(values, only_if_expired=True)

        return ops.maybe_revive(prepared.select_live, revive_if_expired, values)

    def _forget(self, what: str, value: str) -> Operation[int]:
        self._statements()
        assert self._history is not None
        return history.forget(self._history, what, value)

    def _forget_user_id(self, user_id: str) -> str:
        uid = validation.user_id(user_id)
        if uid is None:
            raise TypeError("user_id must be a str, not NoneType")
        return uid

    def _revived(self, row: Any, values: dict[str, Any]) -> AnalyticsSession:
        if row is None:
            raise StoreUnavailable(f"session {shown(values['sid'])} kept changing under revival")
        return self._session(row)

    def _cleanup_moment(self, now: datetime | None) -> datetime:
        return self._now() if now is None else validation.aware_utc(now, "now")

    def _cleanup_operation(
        self, moment: datetime, stop: StopSignal | None
    ) -> tuple[Operation[int], list[int]]:
        """The cleanup as an operation, and the rows it has deleted so far (kept up to
        date batch by batch, so that a cleanup that fails later still counts them)."""
        done = [0]

        def count(deleted: int) -> None:
            done[0] += deleted

        config = self._config
        operation: Operation[int]
        if config.keep_history and self._history is not None:
            operation = history.archive_and_retire(
                self._history, moment, config.history_max_age, count=count, stop=stop
            )
        else:
            operation = delete_expired(
                self._statements(), moment, dialect_name=self._dialect_name, count=count, stop=stop
            )
        return operation, done

    # -- cleanup totals and state ---------------------------------------------------

    def _count_cleaned(self, deleted: int) -> None:
        """Rows that left the table in a cleanup that then failed."""
        with self._cleanup_lock:
            self._total_cleaned += deleted

    def _cleaned(self, moment: datetime, deleted: int) -> int:
        with self._cleanup_lock:
            self._last_cleanup_at = moment
            self._last_cleanup_deleted = deleted
            self._total_cleaned += deleted
        return deleted

    def _cleaner_running(self) -> bool:
        raise NotImplementedError

    def get_state(self) -> StoreState:
        """The store's configuration and what its cleanups did; works at any time."""
        running = self._cleaner_running()
        with self._cleanup_lock:
            return StoreState(
                url=self._url,
                dialect=self._dialect_name,
                table_name=self._config.table_name,
                session_max_age=self._config.session_max_age,
                clean_interval=self._config.clean_interval,
                cleaner_running=running,
                last_cleanup_at=self._last_cleanup_at,
                last_cleanup_deleted=self._last_cleanup_deleted,
                total_cleaned=self._total_cleaned,
            )
