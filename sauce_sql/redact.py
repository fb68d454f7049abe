"""What sauce_sql shows of the values it is given: URLs without secrets, long values cut.

Every message, log line, state and command-line output that names a database renders
its URL with :func:`safe_url`; every value an error message quotes goes through
:func:`shown`, so that neither a password nor an 8 KB header reaches a log.
"""

from __future__ import annotations

import re

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

__all__ = ["HIDDEN", "safe_url", "scrub", "shown"]

HIDDEN = "***"
_HIDDEN_ENCODED = "%2A%2A%2A"

# Query parameters that carry a secret: psycopg logs in with ``?password=``, libpq
# takes ``sslpassword``, other drivers tokens and keys the same way.
_SECRET = r"pass|pwd|secret|token|key"
_SECRET_NAME = re.compile(_SECRET, re.IGNORECASE)
# In text that is not a parsed URL (an unparseable URL, a driver's message): the
# password of ``scheme://user:password@`` (up to the last "@", should the password
# hold one unencoded) and the value of a ``password=...`` pair, URL query or libpq
# key=value string alike.
_USERINFO = re.compile(r"(//[^\s/:@]*:)\S*@")
_SECRET_PAIR = re.compile(rf"((?:{_SECRET})[\w-]*\s*=\s*)('[^']*'|[^\s&;,]*)", re.IGNORECASE)


def safe_url(url: str | URL, *, limit: int | None = None) -> str:
    """``url`` as sauce_sql shows it: every password, in the userinfo or in a
    password-like query parameter, is ``***``; cut to ``limit`` characters if given.

    >>> safe_url("postgresql://app:s3cret@db/analytics?password=s3cret&sslmode=require")
    'postgresql://app:***@db/analytics?password=***&sslmode=require'

    A string that does not parse as a URL is shown with anything password-like hidden.
    """
    if isinstance(url, str):
        text = url
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            return _cut(scrub(text), limit)
    query = {
        name: HIDDEN if _SECRET_NAME.search(name) else value for name, value in url.query.items()
    }
    host = url.host
    if host is not None and "@" in host:
        # An "@" of the password left unencoded: the rest of the password became the host.
        host = host.rpartition("@")[2]
    rendered = url.set(host=host, query=query).render_as_string(hide_password=True)
    # The query's values come out percent-encoded.
    return _cut(rendered.replace(_HIDDEN_ENCODED, HIDDEN), limit)


def scrub(text: str) -> str:
    """``text`` with anything that looks like a password in it replaced by ``***``."""
    text = _USERINFO.sub(rf"\g<1>{HIDDEN}@", text)
    return _SECRET_PAIR.sub(rf"\g<1>{HIDDEN}", text)


def shown(value: object, limit: int = 40) -> str:
    """How a message quotes a value it was given: its repr, or, past ``limit``
    characters, the repr of a prefix and the length.

    >>> shown("x" * 8192)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (8192 characters)"
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except Exception:  # an int too long to print, a broken __repr__
        return f"<{type(value).__name__} object>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (a {type(value).__name__})"


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
