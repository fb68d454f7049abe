"""The values the store hands out and takes in: plain frozen dataclasses, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sauce_sql.errors import InvalidInput

__all__ = ["AnalyticsSession", "ReviveSession", "SequenceType", "StoreState"]


class SequenceType(str, enum.Enum):
    """Which counter :meth:`Store.inc_sequence` adds to."""

    VIEW = "view"
    EVENT = "event"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class AnalyticsSession:
    """One visitor's session as stored; every datetime is timezone-aware UTC."""

    session_id: str
    user_agent: str
    client_ip: str | None
    user_id: str | None
    view_sequence: int
    event_sequence: int
    created_at: datetime
    last_modified: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ReviveSession:
    """The minimum a client keeps (in a cookie, say) to revive its session later.

    >>> revive = ReviveSession("4f1c...", user_agent="curl/8.5")
    >>> ReviveSession.from_dict(revive.to_dict()) == revive
    True
    """

    session_id: str
    user_agent: str = ""
    user_id: str | None = None
    client_ip: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """The fields as a JSON-ready dict keyed by field name."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReviveSession:
        """Rebuild from :meth:`to_dict`'s output; unknown keys are ignored.

        Values are checked when the store uses them, like any other argument.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping, got {type(data).__name__}")
        if "session_id" not in data:
            raise InvalidInput("a revive dict needs a 'session_id'")
        return cls(
            session_id=data["session_id"],
            user_agent=data.get("user_agent") or "",
            user_id=data.get("user_id"),
            client_ip=data.get("client_ip"),
        )


@dataclass(frozen=True, slots=True)
class StoreState:
    """A snapshot of a store's configuration and its cleaner, from ``get_state()``."""

    url: str
    dialect: str
    table_name: str
    session_max_age: float
    clean_interval: float | None
    cleaner_running: bool
    last_cleanup_at: datetime | None
    last_cleanup_deleted: int | None
    total_cleaned: int
