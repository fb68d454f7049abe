"""The baselines ``sauce-sql bench`` measures the store against, and the store's twin.

Each client offers the same operations as callables of a session id, so the benchmark
can run them side by side. The raw SQL clients run *the store's own SQL text* (compiled
from :mod:`sauce_sql.statements` for a table of the same layout) the way a careful
hand-written program would: the stdlib ``sqlite3`` driver or psycopg in autocommit, one
statement and one commit per operation, parameters as literal tuples, times formatted
once per call with the same conversion the store uses. What is left between the two is
the store's own cost: validation, its connection handling, and building a dataclass
with three aware datetimes instead of handing back a bare tuple.

psycopg and redis-py are imported only when used; neither is a dependency.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import Dialect, MetaData

from sauce_sql import statements
from sauce_sql.backends.sqlite.dialect import datetime_to_sqlite
from sauce_sql.models import ReviveSession
from sauce_sql.schema import sessions_table, store_tables
from sauce_sql.store import Store

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "OPERATIONS",
    "Operation",
    "RawPostgres",
    "RawSQLite",
    "RedisClient",
    "store_ops",
    "store_table_names",
]

Operation = Callable[[str], Any]
OPERATIONS = (
    "inc_sequence",
    "lookup_session",
    "new_session",
    "revive_session",
    "maybe_revive_session",
    "assign_user",
)
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
CLIENT_IP = "203.0.113.7"
_UTC = timezone.utc


def store_ops(store: Store) -> dict[str, Operation]:
    """The store's operations, each a function of a session id."""
    revivals: dict[str, ReviveSession] = {}

    def revive(sid: str) -> ReviveSession:
        found = revivals.get(sid)
        if found is None:
            found = revivals[sid] = ReviveSession(sid, USER_AGENT, "user-1", CLIENT_IP)
        return found

    return {
        "inc_sequence": lambda sid: store.inc_sequence(sid, "view"),
        "lookup_session": store.lookup_session,
        "new_session": lambda _: store.new_session(user_agent=USER_AGENT, client_ip=CLIENT_IP),
        "revive_session": lambda sid: store.revive_session(revive(sid)),
        "maybe_revive_session": lambda sid: store.maybe_revive_session(revive(sid)),
        "assign_user": lambda sid: store.assign_user(sid, "user-1"),
    }


def store_table_names(table_name: str) -> list[str]:
    """Every table a store on ``table_name`` makes (its migrations make history and
    aggregates beside it), the version table last: what a bench run has to drop."""
    tables = [table.name for table in store_tables(table_name, MetaData())]
    return [*tables, f"alembic_version_{table_name}"]


def _sql(
    table_name: str, dialect: Dialect, *, lean_expiry: bool = False
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The store's SQL for ``table_name`` and each statement's parameter order."""
    table = sessions_table(table_name)
    built = statements.build(table, dialect.name, lean_expiry=lean_expiry)
    compiled = {}
    for name in ("select_live", "increment_view", "assign_user", "create", "revive"):
        statement = getattr(built, name).compile(dialect=dialect)
        compiled[name] = (statement.string, tuple(statement.positiontup or ()))
    return compiled


class RawSQLite:
    """The stdlib sqlite3 driver in autocommit on a WAL file: the floor to measure from."""

    # The parameter orders the literal tuples below are written for; checked at start.
    ORDERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "select_live": ("sid", "now"),
        "increment_view": ("view_sequence_1", "now", "expires", "sid", "now"),
        "assign_user": ("uid", "now", "expires", "sid", "now"),
        "create": ("sid", "ua", "ip", "uid", "now", "now", "expires", "now"),
        "revive": ("sid", "ua", "ip", "uid", "now", "now", "expires"),
    }

    def __init__(self, path: str, table_name: str, *, max_age: float, synchronous: str) -> None:
        import sqlite3

        from sqlalchemy.dialects.sqlite import pysqlite

        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.connection.execute("PRAGMA busy_timeout = 5000")
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute(f"PRAGMA synchronous = {synchronous}")
        self.cursor = self.connection.cursor()
        self.max_age = timedelta(seconds=max_age)
        sql = _sql(table_name, pysqlite.dialect())
        for name, order in self.ORDERS.items():
            if sql[name][1] != order:
                raise AssertionError(f"{name} now binds {sql[name][1]}, not {order}")
        self.sql = {name: text for name, (text, _) in sql.items()}

    def close(self) -> None:
        """Close the connection."""
        self.cursor.close()
        self.connection.close()

    def _times(self) -> tuple[str, str]:
        now = datetime.now(_UTC)
        return datetime_to_sqlite(now), datetime_to_sqlite(now + self.max_age)

    def ops(self) -> dict[str, Operation]:
        """The same operations as :func:`store_ops`, in raw SQL."""
        cursor, sql = self.cursor, self.sql
        select, inc, assign = sql["select_live"], sql["increment_view"], sql["assign_user"]
        create, revive = sql["create"], sql["revive"]
        now_text = self._times

        def inc_sequence(sid: str) -> Any:
            now, expires = now_text()
            return cursor.execute(inc, (1, now, expires, sid, now)).fetchone()[0]

        def lookup_session(sid: str) -> Any:
            return cursor.execute(select, (sid, datetime_to_sqlite(datetime.now(_UTC)))).fetchone()

        def new_session(_: str) -> Any:
            now, expires = now_text()
            sid = uuid.uuid4().hex
            values = (sid, USER_AGENT, CLIENT_IP, None, now, now, expires, now)
            return cursor.execute(create, values).fetchone()

        def revive_session(sid: str) -> Any:
            now, expires = now_text()
            values = (sid, USER_AGENT, CLIENT_IP, "user-1", now, now, expires)
            return cursor.execute(revive, values).fetchone()

        def assign_user(sid: str) -> Any:
            now, expires = now_text()
            return cursor.execute(assign, ("user-1", now, expires, sid, now)).fetchone()

        return {
            "inc_sequence": inc_sequence,
            "lookup_session": lookup_session,
            "new_session": new_session,
            "revive_session": revive_session,
            # A live session is there: the store's maybe_revive reads it and is done.
            "maybe_revive_session": lookup_session,
            "assign_user": assign_user,
        }


class RawPostgres:
    """psycopg 3 in autocommit running the store's SQL: one round trip per operation."""

    def __init__(
        self,
        url: str,
        table_name: str,
        *,
        max_age: float,
        connection: psycopg.Connection[Any] | None = None,
        lean_expiry: bool = False,
    ) -> None:
        """Connect to ``url``, or run on ``connection`` (an autocommit psycopg
        connection that stays its owner's: close() leaves it open). With
        ``lean_expiry`` increments keep a fresh enough ``expires_at`` (see
        :func:`sauce_sql.statements.build`)."""
        import psycopg
        from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

        self._owned = connection is None
        if connection is None:
            connection = psycopg.connect(_libpq_url(url), autocommit=True)
        self.connection: psycopg.Connection[Any] = connection
        self.cursor = self.connection.cursor()
        self.max_age = timedelta(seconds=max_age)
        dialect = pg_dialect.dialect()  # type: ignore[no-untyped-call]
        compiled = _sql(table_name, dialect, lean_expiry=lean_expiry)
        self.sql = {name: text for name, (text, _) in compiled.items()}

    def close(self) -> None:
        """Close the connection (if it is this client's own)."""
        self.cursor.close()
        if self._owned:
            self.connection.close()

    def ops(self) -> dict[str, Operation]:
        """The same operations as :func:`store_ops`, in raw SQL."""
        cursor, sql, age = self.cursor, self.sql, self.max_age
        select, inc, assign = sql["select_live"], sql["increment_view"], sql["assign_user"]
        create, revive = sql["create"], sql["revive"]

        def inc_sequence(sid: str) -> Any:
            now = datetime.now(_UTC)
            values = {"view_sequence_1": 1, "now": now, "expires": now + age, "sid": sid}
            return cursor.execute(inc, values).fetchone()[0]  # type: ignore[index]

        def lookup_session(sid: str) -> Any:
            return cursor.execute(select, {"sid": sid, "now": datetime.now(_UTC)}).fetchone()

        def upsert(statement: str, sid: str, uid: str | None) -> Any:
            now = datetime.now(_UTC)
            values: dict[str, Any] = {"sid": sid, "ua": USER_AGENT, "ip": CLIENT_IP, "uid": uid}
            values.update(now=now, expires=now + age)
            return cursor.execute(statement, values).fetchone()

        def assign_user(sid: str) -> Any:
            now = datetime.now(_UTC)
            values = {"uid": "user-1", "now": now, "expires": now + age, "sid": sid}
            return cursor.execute(assign, values).fetchone()

        return {
            "inc_sequence": inc_sequence,
            "lookup_session": lookup_session,
            "new_session": lambda _: upsert(create, uuid.uuid4().hex, None),
            "revive_session": lambda sid: upsert(revive, sid, "user-1"),
            "maybe_revive_session": lookup_session,
            "assign_user": assign_user,
        }


class RedisClient:
    """redis-py: the session as a hash, HINCRBY + HSET + EXPIRE in one pipeline."""

    def __init__(self, url: str, prefix: str, *, max_age: float) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.client.ping()
        self.prefix = prefix
        self.max_age = int(max_age)

    def populate(self, ids: list[str]) -> None:
        """Create a hash per session, as new_session would."""
        pipe = self.client.pipeline(transaction=False)
        now = datetime.now(_UTC).isoformat()
        for sid in ids:
            key = self.prefix + sid
            pipe.hset(key, mapping={"view_sequence": 0, "event_sequence": 0, "created_at": now})
            pipe.expire(key, self.max_age)
        pipe.execute()

    def clear(self, ids: list[str]) -> None:
        """Delete the benchmark's keys."""
        for start in range(0, len(ids), 1000):
            self.client.delete(*(self.prefix + sid for sid in ids[start : start + 1000]))

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def inc_sequence(self, sid: str) -> Any:
        """The increment as a Redis user writes it: atomic (MULTI/EXEC), one round trip."""
        key = self.prefix + sid
        pipe = self.client.pipeline()
        pipe.hincrby(key, "view_sequence", 1)
        pipe.hset(key, "last_modified", datetime.now(_UTC).isoformat())
        pipe.expire(key, self.max_age)
        return pipe.execute()[0]


def _libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it (without ``+psycopg``)."""
    from sqlalchemy import make_url

    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)
