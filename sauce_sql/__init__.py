"""sauce_sql: durable analytics sessions in a SQL table (SQLite or PostgreSQL).

>>> from sauce_sql import Store
>>> with Store("sqlite://") as store:
...     session = store.new_session(user_agent="Mozilla/5.0", client_ip="203.0.113.7")
...     store.inc_sequence(session.session_id, "view")
1
"""

from sauce_sql.aio import AsyncStore
from sauce_sql.errors import (
    InvalidInput,
    SauceSQLError,
    SessionExists,
    SessionNotFound,
    StoreUnavailable,
)
from sauce_sql.models import AnalyticsSession, ReviveSession, SequenceType, StoreState
from sauce_sql.store import Store

#: The package's version (pyproject.toml reads it from here).
__version__ = "0.1.0"

__all__ = [
    "AnalyticsSession",
    "AsyncStore",
    "InvalidInput",
    "ReviveSession",
    "SauceSQLError",
    "SequenceType",
    "SessionExists",
    "SessionNotFound",
    "Store",
    "StoreState",
    "StoreUnavailable",
    "__version__",
]
