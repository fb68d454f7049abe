"""The visitor cookie: a session id and when it was issued, signed, nothing else.

``<session id>.<issued, seconds since the epoch in base 36>.<signature>``: about 85
bytes. The signature is itsdangerous' HMAC-SHA256 with the newest key; every key (the
newest first, then the fallbacks in the order given) verifies. A cookie that verifies
only with a fallback key is due to be re-issued, signed with the newest one and keeping
its issue time, so rotating keys never extends a cookie's life.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from itsdangerous import BadSignature, Signer

from sauce_sql.errors import InvalidInput

__all__ = ["MAX_LIFETIME", "CookieCodec", "VisitorCookie", "cookie_value", "set_cookie_header"]

#: Browsers cap a cookie's lifetime at 400 days (RFC 6265bis).
MAX_LIFETIME = 400 * 86_400
_SALT = "sauce_sql.visitor"
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
# Longer than any cookie this module writes: a longer value is no cookie of ours and is
# dropped before any HMAC is computed.
_LONGEST = 160
MIN_KEY_BYTES = 16


@dataclass(frozen=True, slots=True)
class VisitorCookie:
    """A verified cookie: the session id, when it was issued, and whether it must be
    re-issued under the newest key."""

    session_id: str
    issued: int
    stale_key: bool


def _key(value: object, what: str) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")
    if len(value) < MIN_KEY_BYTES:
        raise InvalidInput(f"{what} must be at least {MIN_KEY_BYTES} bytes long")
    return value


class _Signer(Signer):
    """itsdangerous' Signer, deriving its key once rather than on every call."""

    def __init__(self, key: bytes) -> None:
        super().__init__(key, salt=_SALT, key_derivation="hmac", digest_method=hashlib.sha256)
        self._derived = super().derive_key()

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        """The derived key (computed once: this signer holds a single key)."""
        return self._derived


def _signer(key: bytes) -> Signer:
    return _Signer(key)


class CookieCodec:
    """Signs and verifies visitor cookies with ``secret_key`` and ``fallback_keys``.

    >>> codec = CookieCodec("a secret of sixteen+ bytes")
    >>> value = codec.sign("0" * 32, 1_767_268_800)
    >>> codec.verify(value, now=1_767_268_900, max_age=3600)
    VisitorCookie(session_id='00000000000000000000000000000000', issued=1767268800, stale_key=False)
    """

    def __init__(self, secret_key: str | bytes, fallback_keys: Sequence[str | bytes] = ()) -> None:
        if isinstance(fallback_keys, (str, bytes)):
            raise TypeError("fallback_keys must be a sequence of keys, not one key")
        self._newest = _signer(_key(secret_key, "secret_key"))
        self._fallbacks = [
            _signer(_key(key, f"fallback_keys[{n}]")) for n, key in enumerate(fallback_keys)
        ]
        self._verified = functools.lru_cache(maxsize=16_384)(self._check)

    def sign(self, session_id: str, issued: int) -> str:
        """The cookie value for ``session_id`` issued at ``issued`` (epoch seconds)."""
        return self._newest.sign(f"{session_id}.{_base36(issued)}").decode()

    def verify(self, value: str, *, now: float, max_age: float) -> VisitorCookie | None:
        """The cookie's content, or None for anything that is not a live cookie of ours:
        tampered, malformed, oversized, signed with no key we hold, or older than
        ``max_age`` seconds (absolute, from its issue)."""
        if len(value) > _LONGEST or value.count(".") != 2:
            return None
        try:
            cookie = self._verified(value)
        except _Refused:
            return None
        # A cookie from the future (beyond a day of clock skew) was not issued by us.
        if not now - max_age < cookie.issued <= now + 86_400:
            return None
        return cookie

    def _check(self, value: str) -> VisitorCookie:
        # Cached per value (a returning visitor's cookie is checked once per process);
        # refusals raise, so that they are not cached and garbage cannot evict anything.
        raw = value.encode("ascii", "replace")
        stale = False
        try:
            payload = self._newest.unsign(raw)
        except BadSignature:
            for signer in self._fallbacks:
                try:
                    payload = signer.unsign(raw)
                except BadSignature:
                    continue
                stale = True
                break
            else:
                raise _Refused from None
        session_id, _, issued_text = payload.decode().partition(".")
        if not _SESSION_ID.fullmatch(session_id):
            raise _Refused
        try:
            issued = int(issued_text, 36)
        except ValueError:
            raise _Refused from None
        return VisitorCookie(session_id, issued, stale)


class _Refused(Exception):
    """Not a cookie of ours."""


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, remainder = divmod(number, 36)
        text = digits[remainder] + text
        if not number:
            return text


def set_cookie_header(
    name: str, value: str, *, max_age: int, secure: bool, domain: str | None = None
) -> str:
    """The ``Set-Cookie`` header value: HttpOnly, SameSite=Lax, Path=/, Secure on https."""
    header = f"{name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Lax"
    if domain:
        header += f"; Domain={domain}"
    return header + "; Secure" if secure else header


def cookie_value(header: str, name: str) -> list[str]:
    """Every value the ``Cookie`` request header gives ``name``, in order."""
    values = []
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            values.append(value.strip().strip('"'))
    return values
