"""The middleware's options, validated once when it is built."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sauce_sql import validation
from sauce_sql.errors import InvalidInput
from sauce_sql.web.bots import crawler_index
from sauce_sql.web.clientip import ClientAddress
from sauce_sql.web.cookie import MAX_LIFETIME, CookieCodec
from sauce_sql.web.rules import Rules

__all__ = ["DEFAULT_COOKIE_MAX_AGE", "ENVIRON_KEYS", "WANTED_HEADERS", "WebConfig", "configure"]

#: The request headers the visit step reads (lower case); adapters pick only these.
WANTED_HEADERS = frozenset(
    {
        "cookie",
        "user-agent",
        "sec-purpose",
        "purpose",
        "x-moz",
        "sec-gpc",
        "sec-fetch-mode",
        "x-forwarded-for",
        "x-forwarded-proto",
    }
)
#: (header, its WSGI environ key) for each of :data:`WANTED_HEADERS`.
ENVIRON_KEYS = tuple(
    (name, "HTTP_" + name.upper().replace("-", "_")) for name in sorted(WANTED_HEADERS)
)
#: 13 months, the French regulator's limit for consent-exempt audience measurement.
DEFAULT_COOKIE_MAX_AGE = 395 * 86_400
_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}")


@dataclass(frozen=True)
class WebConfig:
    """The middleware's options, validated when built (see ``SauceMiddleware``)."""

    secret_key: str | bytes
    fallback_keys: Sequence[str | bytes] = ()
    cookie_name: str = "sauce"
    cookie_max_age: float = DEFAULT_COOKIE_MAX_AGE
    cookie_domain: str | None = None
    secure: bool | None = None
    count_views: bool = True
    client_ip: str = "masked"
    trusted_proxies: Sequence[str] = ()
    rules: Rules = field(default_factory=Rules)
    retry_after: float = 1.0
    clock: Callable[[], datetime] | None = None
    codec: CookieCodec = field(init=False, repr=False)
    address: ClientAddress = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codec", CookieCodec(self.secret_key, self.fallback_keys))
        object.__setattr__(self, "address", ClientAddress(self.client_ip, self.trusted_proxies))
        if not isinstance(self.cookie_name, str) or not _COOKIE_NAME.fullmatch(self.cookie_name):
            raise InvalidInput(f"cookie_name {self.cookie_name!r} is not a valid cookie name")
        age = self.cookie_max_age
        if not isinstance(age, (int, float)) or not 0 < age <= MAX_LIFETIME or math.isnan(age):
            raise InvalidInput(f"cookie_max_age must be > 0 and at most 400 days, not {age!r}")
        validation.positive_seconds(self.retry_after, "retry_after")

    def now(self) -> float:
        """Seconds since the epoch, from the clock option or the system's."""
        if self.clock is None:
            return time.time()
        return validation.aware_utc(self.clock(), "the clock's datetime").timestamp()


def configure(
    *,
    secret_key: str | bytes,
    fallback_keys: Sequence[str | bytes],
    cookie_name: str,
    cookie_max_age: float,
    cookie_domain: str | None,
    secure: bool | None,
    count_views: bool,
    client_ip: str,
    trusted_proxies: Sequence[str],
    honor_gpc: bool,
    skip_headless: bool,
    probe_paths: Sequence[str],
    static_paths: Sequence[str],
    static_extensions: Sequence[str],
    retry_after: float,
    clock: Callable[[], datetime] | None,
) -> WebConfig:
    """The validated options of either middleware. Builds the crawler index too (once
    per process, about 0.1 s), so that the app's first visitor does not wait for it."""
    crawler_index()
    rules = Rules(probe_paths, static_paths, static_extensions, skip_headless, honor_gpc)
    return WebConfig(
        secret_key,
        tuple(fallback_keys) if not isinstance(fallback_keys, (str, bytes)) else fallback_keys,
        cookie_name,
        cookie_max_age,
        cookie_domain,
        secure,
        count_views,
        client_ip,
        trusted_proxies,
        rules,
        retry_after,
        clock,
    )
