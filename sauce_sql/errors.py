"""The errors sauce_sql raises on purpose.

The hierarchy::

    SauceSQLError
    ├── SessionNotFound     (also a KeyError)
    ├── SessionExists
    ├── InvalidInput        (also a ValueError)
    └── StoreUnavailable    (the database cannot be reached or used; the driver's
        │                    error is chained as ``__cause__``)
        └── SchemaConflict  (the store's table is not one it can use; not an outage)

Driver and SQLAlchemy errors never leave the store bare: the store translates them at
one boundary: :meth:`sauce_sql.backends.base.HeldConnections.execute` (and, for
schema work, ``Store.start``).
"""

from __future__ import annotations

from sauce_sql.redact import scrub, shown

__all__ = [
    "InvalidInput",
    "SauceSQLError",
    "SchemaConflict",
    "SessionExists",
    "SessionNotFound",
    "StoreUnavailable",
    "unavailable",
    "unstorable",
]


class SauceSQLError(Exception):
    """Base of every error sauce_sql raises on purpose."""


class SessionNotFound(SauceSQLError, KeyError):
    """No live session has the given id.

    A ``KeyError`` too, so code written against a mapping-like store keeps working.
    """

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        # KeyError's __str__ would print the repr of the argument only.
        return f"no live session with id {shown(self.session_id)}"


class SessionExists(SauceSQLError):
    """A live session already has the id given to ``new_session``."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"a live session with id {shown(session_id)} already exists")
        self.session_id = session_id


class InvalidInput(SauceSQLError, ValueError):
    """An argument was refused before the database was touched."""


class StoreUnavailable(SauceSQLError):
    """The database could not be reached or used; the cause is chained."""


class SchemaConflict(StoreUnavailable):
    """The database holds a table of the store's name that sauce_sql cannot use.

    Another application's table of that name, a revision migrated by a newer
    sauce_sql, a table dropped by hand: the database works, so retrying will not
    help, and the message says what to do. A StoreUnavailable all the same, since
    the store cannot use the database.
    """


def unavailable(where: str, exc: BaseException) -> StoreUnavailable:
    """A StoreUnavailable for ``exc``, on one line (raise it ``from exc``).

    SQLAlchemy wraps driver errors with a link to its docs and drivers spread messages
    over several lines; the driver's own message says what went wrong.
    """
    cause = getattr(exc, "orig", None) or exc
    # A driver may quote a connection string in its message.
    detail = scrub(" ".join(str(cause).split())) or type(cause).__name__
    return StoreUnavailable(f"{where}: {detail}")


# SQLSTATEs of a server that cannot convert a value into its encoding:
# untranslatable_character, character_not_in_repertoire.
_UNSTORABLE_STATES = ("22P05", "22021")


def unstorable(exc: BaseException) -> InvalidInput | None:
    """An InvalidInput (raise it ``from exc``) if ``exc`` says a value cannot be held
    in the database's encoding, else None.

    psycopg encodes each value in the connection's encoding before it sends the
    statement (UnicodeEncodeError), or the server refuses to convert it; either way
    nothing was written and the caller's value is what cannot be stored.
    """
    if isinstance(exc, UnicodeEncodeError):
        character = exc.object[exc.start : exc.start + 1]
        return InvalidInput(
            f"{shown(exc.object)} cannot be stored in this database: its encoding "
            f"({exc.encoding}) has no {character!r}; a UTF8 database holds every character"
        )
    if getattr(exc, "sqlstate", None) in _UNSTORABLE_STATES:
        detail = " ".join(str(exc).split())
        return InvalidInput(f"a value cannot be stored in this database: {detail}")
    return None
