"""Checks every argument before the database is touched.

Each function returns the value as it will be stored, or raises :class:`InvalidInput`
(a bad value) or :class:`TypeError` (a value of the wrong type). They sit on the hot
path, so each is a few cheap tests: a type check, a length check and one regex scan.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from datetime import datetime, timedelta, timezone

from sauce_sql.errors import InvalidInput
from sauce_sql.models import SequenceType
from sauce_sql.redact import shown
from sauce_sql.schema import ID_MAX_LENGTH, IP_MAX_LENGTH, USER_AGENT_MAX_LENGTH

__all__ = [
    "TABLE_NAME_MAX_LENGTH",
    "aware_utc",
    "client_ip",
    "expiry",
    "positive_seconds",
    "sequence_column",
    "session_id",
    "table_name",
    "user_agent",
    "user_id",
]

TABLE_NAME_MAX_LENGTH = 40

# C0 and C1 control characters (NUL included) and lone surrogates, which no database
# encoding can hold.
_FORBIDDEN_IN_ID = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# An IPv6 zone id is an interface: a name (Linux allows 15 characters) or a number.
_ZONE_ID = re.compile(r"[A-Za-z0-9._-]{1,15}", re.ASCII)
_TABLE_NAME = re.compile(rf"[A-Za-z_][A-Za-z0-9_]{{0,{TABLE_NAME_MAX_LENGTH - 1}}}", re.ASCII)
_SEQUENCE_COLUMNS = {
    SequenceType.VIEW: "view_sequence",
    SequenceType.EVENT: "event_sequence",
    "view": "view_sequence",
    "event": "event_sequence",
}


def _identifier(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not 0 < len(value) <= ID_MAX_LENGTH:
        raise InvalidInput(f"{what} must be 1 to {ID_MAX_LENGTH} characters long, got {len(value)}")
    # Printable ASCII (nearly every id) holds neither, and is told in one C call.
    if not (value.isascii() and value.isprintable()) and _FORBIDDEN_IN_ID.search(value):
        raise InvalidInput(f"{what} {shown(value)} holds a control character or a lone surrogate")
    return value


def session_id(value: object) -> str:
    """A session id: 1 to 255 characters, none of them a control character."""
    # Nearly every id: a str of printable ASCII, told without another call.
    if (
        type(value) is str
        and 0 < len(value) <= ID_MAX_LENGTH
        and value.isascii()
        and value.isprintable()
    ):
        return value
    return _identifier(value, "session_id")


def user_id(value: object) -> str | None:
    """A user id like a session id, or None for no user."""
    if value is None:
        return None
    return _identifier(value, "user_id")


def user_agent(value: object) -> str:
    """The user agent as stored: NUL dropped, cut to 512 characters, never refused.

    Lone surrogates (which can reach Python from a badly decoded header) cannot be
    encoded for any database, so they become U+FFFD rather than failing the request.
    """
    if not isinstance(value, str):
        raise TypeError(f"user_agent must be a str, not {type(value).__name__}")
    if "\x00" in value:
        value = value.replace("\x00", "")
    if _SURROGATE.search(value):
        value = _SURROGATE.sub("\ufffd", value)
    return value[:USER_AGENT_MAX_LENGTH]


def client_ip(value: object) -> str | None:
    """An IPv4 or IPv6 address in canonical text form; None or "" for none."""
    if value is None or value == "":
        return None
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = str(value)
    if not isinstance(value, str):
        raise TypeError(f"client_ip must be a str, not {type(value).__name__}")
    return _canonical_ip(value)


# Parsing an address costs more than a SQLite read, and a visitor keeps its address
# for many requests: remember the most recent ones (a refused one is not remembered).
@functools.lru_cache(maxsize=4096)
def _canonical_ip(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidInput(f"client_ip {shown(value)} is not an IP address") from None
    zone = getattr(address, "scope_id", None)
    if zone is not None and not _ZONE_ID.fullmatch(zone):
        # ipaddress takes any text after "%" as the zone, markup and control
        # characters included; a stored "address" must be one.
        raise InvalidInput(
            f"client_ip {shown(value)} has a zone id that is not an interface name or "
            "number (letters, digits, '.', '_', '-', at most 15 characters)"
        )
    canonical = str(address)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # Python 3.13 changed how str() writes these; keep one form on every version.
        canonical = f"::ffff:{address.ipv4_mapped}"
    if len(canonical) > IP_MAX_LENGTH:  # cannot happen with the zone bounded; a backstop
        raise InvalidInput(f"client_ip {shown(value)} is longer than {IP_MAX_LENGTH} characters")
    return canonical


def sequence_column(value: object) -> str:
    """The counter column for a :class:`SequenceType` (or its string value)."""
    try:
        return _SEQUENCE_COLUMNS[value]  # type: ignore[index]
    except (KeyError, TypeError):
        raise InvalidInput(f"sequence type must be 'view' or 'event', got {shown(value)}") from None


def aware_utc(value: object, what: str = "datetime") -> datetime:
    """An aware datetime converted to UTC; naive datetimes are refused."""
    if not isinstance(value, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"{what} {shown(value, 120)} is naive; give a timezone-aware datetime")
    try:
        return value.astimezone(timezone.utc)
    except OverflowError as exc:  # datetime.max west of UTC, datetime.min east of it
        raise InvalidInput(
            f"{what} {shown(value, 120)} is outside datetime's range in UTC"
        ) from exc


def expiry(now: datetime, max_age: timedelta) -> datetime:
    """When a session written at ``now`` expires; InvalidInput past year 9999."""
    try:
        return now + max_age
    except OverflowError as exc:
        raise InvalidInput(
            f"a session written at {now} would expire after year 9999: the clock is "
            "too far ahead for session_max_age"
        ) from exc


def positive_seconds(value: object, what: str) -> float:
    """A finite number of seconds greater than zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    # Below a microsecond, timedelta rounds to zero: the session would be born expired.
    if not math.isfinite(seconds) or seconds < 1e-6:
        raise InvalidInput(
            f"{what} must be a finite number of seconds >= 0.000001, got {shown(value)}"
        )
    return seconds


def table_name(value: object) -> str:
    """A plain SQL identifier: letters, digits and underscores, at most 40 characters,
    folded to lower case.

    SQLite matches table names without regard to case, quoted or not, and PostgreSQL
    folds unquoted ones: folding makes "Sessions" and "sessions" one table on every
    backend, under the name a plain ``SELECT ... FROM sessions`` finds.
    """
    if not isinstance(value, str):
        raise TypeError(f"table_name must be a str, not {type(value).__name__}")
    if not _TABLE_NAME.fullmatch(value):
        raise InvalidInput(
            f"table_name {shown(value)} must be letters, digits and underscores, not start "
            f"with a digit, and be at most {TABLE_NAME_MAX_LENGTH} characters"
        )
    return value.lower()
