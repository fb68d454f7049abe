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

        The dict may come from a client: anything malformed in it (not a mapping, a
        missing or empty ``session_id``, a field of the wrong type) is
        :class:`InvalidInput`, and nothing is coerced. The values themselves are
        checked when the store uses them, like any other argument.
        """
        if not isinstance(data, Mapping):
            raise InvalidInput(f"a revive dict must be a mapping, not {type(data).__name__}")
        session_id = data.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInput("a revive dict needs a non-empty str 'session_id'")
        user_agent = data.get("user_agent", "")
        if not isinstance(user_agent, str):
            raise InvalidInput(
                f"a revive dict's 'user_agent' must be a str, not {type(user_agent).__name__}"
            )
        optional = {name: data.get(name) for name in ("user_id", "client_ip")}
        for name, value in optional.items():
            if value is not None and not isinstance(value, str):
                raise InvalidInput(
                    f"a revive dict's {name!r} must be a str or None, not {type(value).__name__}"
                )
        return cls(session_id, user_agent, optional["user_id"], optional["client_ip"])


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
