"""The sessions table: its columns, the UTC datetime type and the ORM mapping. No I/O.

The table's name is a parameter (several tables can share one database), so the table
is built by :func:`sessions_table`; :class:`SessionRecord` maps the default ``sessions``
table for applications that prefer the ORM::

    with Session(engine) as orm:
        bots = orm.scalars(select(SessionRecord).where(SessionRecord.user_agent.like("%bot%")))
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Dialect, Index, MetaData, String, Table
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

__all__ = [
    "DEFAULT_TABLE_NAME",
    "IP_MAX_LENGTH",
    "ID_MAX_LENGTH",
    "USER_AGENT_MAX_LENGTH",
    "SessionRecord",
    "UTCDateTime",
    "sessions_table",
]

DEFAULT_TABLE_NAME = "sessions"
ID_MAX_LENGTH = 255
USER_AGENT_MAX_LENGTH = 512
# The longest canonical IPv6 text with an interface scope we accept ("fe80::1%eth0").
IP_MAX_LENGTH = 64


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
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)  # type: ignore[no-any-return]
        return value.astimezone(timezone.utc)  # type: ignore[no-any-return]


def sessions_table(name: str = DEFAULT_TABLE_NAME, metadata: MetaData | None = None) -> Table:
    """Build the sessions table under ``name`` (validated by the caller).

    The index is named after the table, because index names are per schema, not per
    table, in both SQLite and PostgreSQL.
    """
    metadata = MetaData() if metadata is None else metadata
    return Table(
        name,
        metadata,
        Column("session_id", String(ID_MAX_LENGTH), primary_key=True),
        Column("user_agent", String(USER_AGENT_MAX_LENGTH), nullable=False, server_default=""),
        Column("client_ip", String(IP_MAX_LENGTH), nullable=True),
        Column("user_id", String(ID_MAX_LENGTH), nullable=True),
        Column("view_sequence", BigInteger, nullable=False, server_default="0"),
        Column("event_sequence", BigInteger, nullable=False, server_default="0"),
        Column("created_at", UTCDateTime, nullable=False),
        Column("last_modified", UTCDateTime, nullable=False),
        Column("expires_at", UTCDateTime, nullable=False),
        Index(f"ix_{name}_expires_at", "expires_at"),
        # Rows are small and always found by session_id: keyed storage saves SQLite the
        # second B-tree a rowid table keeps for the primary key.
        sqlite_with_rowid=False,
    )


class Base(DeclarativeBase):
    """Declarative base of :class:`SessionRecord`."""


class SessionRecord(Base):
    """ORM mapping of the default ``sessions`` table, for ad-hoc queries."""

    __table__ = sessions_table(DEFAULT_TABLE_NAME, Base.metadata)
