"""The sessions tables: their columns, the UTC datetime type and the ORM mapping. No I/O.

The table's name is a parameter (several tables can share one database), so the table
is built by :func:`sessions_table`; beside it live ``<name>_history`` (the sessions
cleanup archived, :func:`history_table`) and ``<name>_aggregates`` (what history
retention keeps of the rows it removes, :func:`aggregates_table`).
:class:`SessionRecord` maps the default ``sessions`` table for applications that prefer
the ORM::

    with Session(engine) as orm:
        bots = orm.scalars(select(SessionRecord).where(SessionRecord.user_agent.like("%bot%")))
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    text,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

__all__ = [
    "DEFAULT_TABLE_NAME",
    "IP_MAX_LENGTH",
    "ID_MAX_LENGTH",
    "USER_AGENT_MAX_LENGTH",
    "AGGREGATE_COUNTERS",
    "BUCKET_SECONDS",
    "SessionRecord",
    "USER_INDEX_WHERE",
    "UTCDateTime",
    "VALUE_COUNTERS",
    "FAMILY_MAX_LENGTH",
    "aggregates_table",
    "aggregates_table_name",
    "browser_aggregates_table",
    "value_aggregates_table",
    "history_table",
    "history_table_name",
    "sessions_table",
    "store_tables",
]

DEFAULT_TABLE_NAME = "sessions"
ID_MAX_LENGTH = 255
USER_AGENT_MAX_LENGTH = 512
# The longest canonical IPv6 text with an interface scope we accept ("fe80::1%eth0").
IP_MAX_LENGTH = 64
#: The aggregates' time step: every IANA zone's offset is a whole number of quarter
#: hours, so each 15-minute UTC bucket falls within one calendar day of every zone.
BUCKET_SECONDS = 900
#: The counters of an aggregates bucket, each a sum that adds across buckets.
AGGREGATE_COUNTERS = ("sessions", "views", "events", "bounces", "identified", "revived")
#: The per-session counters whose distributions (median, maximum) the value aggregates keep.
VALUE_COUNTERS = ("views", "events")
#: Longer than any name :func:`sauce_sql.browsers.browser_family` gives.
FAMILY_MAX_LENGTH = 32


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime column that takes only aware datetimes and gives back aware UTC ones.

    PostgreSQL stores ``TIMESTAMP WITH TIME ZONE``. SQLite has no time type: it stores
    the naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` (SQLAlchemy's own DateTime format,
    which sorts as time and which SQLite's date functions read), and UTC is re-attached
    on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} given where an aware one is required")
        # SQLite's DATETIME writes the fields alone, so the UTC value is its UTC text.
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]


def _session_columns(*, key: bool) -> list[Column[Any]]:
    return [
        Column("session_id", String(ID_MAX_LENGTH), primary_key=key, nullable=False),
        Column("user_agent", String(USER_AGENT_MAX_LENGTH), nullable=False, server_default=""),
        Column("client_ip", String(IP_MAX_LENGTH), nullable=True),
        Column("user_id", String(ID_MAX_LENGTH), nullable=True),
        Column("view_sequence", BigInteger, nullable=False, server_default="0"),
        Column("event_sequence", BigInteger, nullable=False, server_default="0"),
        Column("created_at", UTCDateTime, nullable=False),
        Column("last_modified", UTCDateTime, nullable=False),
        Column("expires_at", UTCDateTime, nullable=False),
    ]


def history_table_name(name: str) -> str:
    """The history table that belongs to the sessions table ``name``."""
    return f"{name}_history"


def aggregates_table_name(name: str) -> str:
    """The aggregates table that belongs to the sessions table ``name``."""
    return f"{name}_aggregates"


#: The rows the user_id indexes hold (migration 0004). Erasure looks up ``user_id =
#: :uid``, which no NULL matches, so anonymous sessions (most of them) need no entry:
#: each of their inserts, moves and deletes then skips a B-tree.
USER_INDEX_WHERE = "user_id IS NOT NULL"


def _user_index(name: str) -> Index:
    where = text(USER_INDEX_WHERE)
    return Index(name, "user_id", sqlite_where=where, postgresql_where=where)


def sessions_table(name: str = DEFAULT_TABLE_NAME, metadata: MetaData | None = None) -> Table:
    """Build the sessions table under ``name`` (validated by the caller).

    Index names start with the table's, because index names are per schema, not per
    table, in both SQLite and PostgreSQL.
    """
    metadata = MetaData() if metadata is None else metadata
    return Table(
        name,
        metadata,
        *_session_columns(key=True),
        Index(f"ix_{name}_expires_at", "expires_at"),
        # Erasure (forget_user) finds a user's sessions by it.
        _user_index(f"ix_{name}_user_id"),
        # Rows are small and always found by session_id: keyed storage saves SQLite the
        # second B-tree a rowid table keeps for the primary key.
        sqlite_with_rowid=False,
    )


def history_table(name: str = DEFAULT_TABLE_NAME, metadata: MetaData | None = None) -> Table:
    """Build ``<name>_history``: the live table's columns, one row per archived session.

    One id can be archived several times (a new session under an old id, or a revived
    one expiring again), each time with a later ``expires_at``, so the key is
    ``(expires_at, session_id)``: retention then reads the oldest rows as a range of
    the key, and SQLite appends archived rows at the end of its tree. The key holds
    the partition column, as a range-partitioned PostgreSQL table requires (see
    :mod:`sauce_sql.partitions`).
    """
    metadata = MetaData() if metadata is None else metadata
    history = history_table_name(name)
    return Table(
        history,
        metadata,
        *_session_columns(key=False),
        PrimaryKeyConstraint("expires_at", "session_id", name=f"pk_{history}"),
        # Revival and forget_session find an id's archived sessions by it.
        Index(f"ix_{history}_session_id", "session_id"),
        _user_index(f"ix_{history}_user_id"),
        sqlite_with_rowid=False,
    )


def aggregates_table(name: str = DEFAULT_TABLE_NAME, metadata: MetaData | None = None) -> Table:
    """Build ``<name>_aggregates``: additive counts per 15-minute UTC bucket.

    History retention folds the sessions it removes into the bucket of their
    ``created_at`` (sessions, views, events, bounces, identified) before deleting them,
    so no past day's figures change; ``revived`` counts revivals of expired or archived
    sessions in the bucket of the revival. Beside it, :func:`browser_aggregates_table`
    and :func:`value_aggregates_table` keep what medians and browser families need.
    """
    metadata = MetaData() if metadata is None else metadata
    return Table(
        aggregates_table_name(name),
        metadata,
        Column("bucket_start", UTCDateTime, primary_key=True),
        *(
            Column(counter, BigInteger, nullable=False, server_default="0")
            for counter in AGGREGATE_COUNTERS
        ),
        sqlite_with_rowid=False,
    )


def browser_aggregates_table(name: str, metadata: MetaData | None = None) -> Table:
    """Build ``<name>_agg_browsers``: sessions per 15-minute UTC bucket of their
    ``created_at`` and browser family, for the sessions history retention removed."""
    metadata = MetaData() if metadata is None else metadata
    return Table(
        f"{name}_agg_browsers",
        metadata,
        Column("bucket_start", UTCDateTime, primary_key=True),
        Column("family", String(FAMILY_MAX_LENGTH), primary_key=True),
        Column("sessions", BigInteger, nullable=False, server_default="0"),
        sqlite_with_rowid=False,
    )


def value_aggregates_table(name: str, metadata: MetaData | None = None) -> Table:
    """Build ``<name>_agg_values``: sessions per 15-minute UTC bucket, counter
    (``views`` or ``events``) and value of that counter, for the sessions history
    retention removed. A bucket holds few distinct values, and with every value kept
    the median and maximum over any set of buckets are exact."""
    metadata = MetaData() if metadata is None else metadata
    return Table(
        f"{name}_agg_values",
        metadata,
        Column("bucket_start", UTCDateTime, primary_key=True),
        Column("counter", String(8), primary_key=True),
        Column("value", BigInteger, primary_key=True),
        Column("sessions", BigInteger, nullable=False, server_default="0"),
        sqlite_with_rowid=False,
    )


def store_tables(name: str, metadata: MetaData) -> tuple[Table, ...]:
    """The live, history and aggregates tables of ``name``, in ``metadata``."""
    return (
        sessions_table(name, metadata),
        history_table(name, metadata),
        aggregates_table(name, metadata),
        browser_aggregates_table(name, metadata),
        value_aggregates_table(name, metadata),
    )


class Base(DeclarativeBase):
    """Declarative base of :class:`SessionRecord`."""


class SessionRecord(Base):
    """ORM mapping of the default ``sessions`` table, for ad-hoc queries."""

    __table__ = sessions_table(DEFAULT_TABLE_NAME, Base.metadata)
