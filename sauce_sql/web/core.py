"""The visit step both adapters share, with no I/O: options, the per-request visit, the
tracker's I/O-free half, and the counts of what was tracked and skipped.

An adapter calls :func:`begin` with the request, hands the visit's tracker to the app,
asks :meth:`Visit.respond` for a ``Set-Cookie`` header when the response starts, and
runs :meth:`Visit.finish` (a plan, see ``plans.py``) once the response has been sent.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from sauce_sql import validation
from sauce_sql.errors import InvalidInput
from sauce_sql.models import ReviveSession
from sauce_sql.web.clientip import ClientAddress
from sauce_sql.web.cookie import MAX_LIFETIME, CookieCodec, VisitorCookie, cookie_value
from sauce_sql.web.cookie import set_cookie_header as _set_cookie_header
from sauce_sql.web.rules import Rules, Skip

__all__ = [
    "WANTED_HEADERS",
    "TrackerBase",
    "Visit",
    "WebConfig",
    "WebState",
    "WebStats",
    "begin",
    "configure",
]

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


@dataclass(frozen=True)
class WebState:
    """What the middleware has done since it was built (``middleware.get_state()``).

    ``skipped`` counts requests per :class:`Skip` reason; ``store_failures`` the
    tracking attempts the store refused, ``dropped`` those not tried because it was
    down; ``store_available`` is False from a failure until the next success.
    """

    views: int
    events: int
    skipped: Mapping[str, int]
    store_failures: int
    dropped: int
    store_available: bool


class WebStats:
    """Thread-safe counters behind :class:`WebState`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skipped: Counter[Skip] = Counter()
        self.views = self.events = self.failures = self.dropped = 0
        self.available = True

    def skip(self, reason: Skip) -> None:
        """Count a request skipped for ``reason``."""
        with self._lock:
            self._skipped[reason] += 1

    def add(self, *, views: int = 0, events: int = 0) -> None:
        """Count what a request tracked."""
        with self._lock:
            self.views += views
            self.events += events

    def snapshot(self) -> WebState:
        """The counts now."""
        with self._lock:
            skipped = MappingProxyType({str(k): n for k, n in self._skipped.items()})
            return WebState(
                self.views, self.events, skipped, self.failures, self.dropped, self.available
            )


_UNSET = object()


class Visit:
    """One request's visitor: its id, what is tracked on it, whether a cookie is due."""

    __slots__ = (
        "_client_ip",
        "config",
        "cookie",
        "ensured",
        "events",
        "headers",
        "method",
        "not_view",
        "peer",
        "responded",
        "scheme",
        "session_id",
        "skipped",
        "user",
        "view_due",
        "views",
    )

    def __init__(
        self,
        config: WebConfig,
        method: str,
        headers: dict[str, str],
        peer: str | None,
        scheme: str,
        skipped: Skip | None,
        cookie: VisitorCookie | None,
    ) -> None:
        self.config = config
        self.method = method
        self.headers = headers
        self.peer = peer
        self.scheme = scheme
        self.skipped = skipped
        self.cookie = cookie
        self.session_id = None if skipped else cookie.session_id if cookie else uuid.uuid4().hex
        self.ensured = False  # whether the session is known to be live in the store
        self.responded = False  # whether the response's headers are gone
        self.view_due = False
        self.not_view: Skip | None = None
        self.views = self.events = 0
        self.user: object = _UNSET
        self._client_ip: object = _UNSET

    @property
    def tracked(self) -> bool:
        """Whether anything was counted or recorded for this request yet."""
        return bool(self.views or self.events or self.view_due) or self.user is not _UNSET

    @property
    def finish_due(self) -> bool:
        """Whether something is left to store once the response has been sent."""
        return self.view_due or self.user is not _UNSET

    def client_ip(self) -> str | None:
        """The address the store keeps for this visitor (worked out once, when needed)."""
        if self._client_ip is _UNSET:
            forwarded = self.headers.get("x-forwarded-for")
            self._client_ip = self.config.address.client_ip(self.peer, forwarded)
        value = self._client_ip
        return value if isinstance(value, str) else None

    def revive(self, user_id: str | None = None) -> ReviveSession:
        """The revival of this visitor's session: its id, the current user agent and
        client IP, and a user only if the app identified one (never the cookie's)."""
        assert self.session_id is not None
        user_agent = self.headers.get("user-agent", "")
        return ReviveSession(self.session_id, user_agent, user_id, self.client_ip())

    def identify(self, user_id: str | None) -> None:
        """Record the app's user for this visitor; it is stored once the response is sent."""
        if self.skipped is None:
            self.user = validation.user_id(user_id)

    def respond(self, status: int, content_type: str) -> str | None:
        """At the response's start: decide whether it is a page view to count, and return
        the ``Set-Cookie`` header value that is due (a new or re-signed cookie), if any."""
        self.responded = True
        if self.skipped is not None:
            return None
        reason = Rules.not_a_view(self.method, self.headers, status, content_type)
        if reason is None and not self.config.count_views:
            reason = Skip.NOT_AUTOMATIC
        self.not_view = reason
        self.view_due = reason is None and not self.views  # track_visit() counted it already
        if not self.tracked:
            return None
        return self.set_cookie()

    def set_cookie(self) -> str | None:
        """The ``Set-Cookie`` value a tracked visitor is due, or None."""
        config, cookie = self.config, self.cookie
        if cookie is not None and not cookie.stale_key:
            return None
        assert self.session_id is not None
        now = int(config.now())
        issued = cookie.issued if cookie is not None else now
        max_age = max(1, int(issued + config.cookie_max_age - now))
        secure = config.secure
        if secure is None:
            secure = self.scheme in ("https", "wss") or (
                self.headers.get("x-forwarded-proto", "").lower() == "https"
                and config.address.from_proxy(self.peer)
            )
        value = config.codec.sign(self.session_id, issued)
        return _set_cookie_header(
            config.cookie_name, value, max_age=max_age, secure=secure, domain=config.cookie_domain
        )

    def unviewed_reason(self, websocket: bool = False) -> Skip | None:
        """Why the finished request counted nothing, or None when it tracked something."""
        if self.skipped is not None:
            return self.skipped
        if self.tracked:
            return None
        if websocket:
            return Skip.WEBSOCKET
        return self.not_view


def begin(
    config: WebConfig,
    method: str,
    path: str,
    headers: dict[str, str],
    peer: str | None,
    scheme: str,
) -> Visit:
    """The visit of one request: skipped (and why), or the visitor's id from a valid
    cookie, else a new id. ``headers`` holds the :data:`WANTED_HEADERS` present."""
    skipped = config.rules.skip_request(method, path, headers)
    cookie = None
    if skipped is None:
        header = headers.get("cookie")
        if header:
            now = config.now()
            for value in cookie_value(header, config.cookie_name):
                cookie = config.codec.verify(value, now=now, max_age=config.cookie_max_age)
                if cookie is not None:
                    break
    return Visit(config, method, headers, peer, scheme, skipped, cookie)


class TrackerBase:
    """What the app sees of its visitor: the half of the tracker that does no I/O."""

    __slots__ = ("_visit",)

    def __init__(self, visit: Visit) -> None:
        self._visit = visit

    @property
    def session_id(self) -> str | None:
        """The visitor's session id (a new visitor's too, before its row exists); None
        on a skipped request."""
        return self._visit.session_id

    @property
    def skipped(self) -> str | None:
        """Why the request is not tracked (a :class:`Skip` value), else None. Set before
        the app runs for skipped requests; once the response has started, it also says
        why a request on which nothing was tracked is no page view."""
        visit = self._visit
        if visit.skipped is not None:
            return visit.skipped.value
        if visit.responded and not visit.tracked and visit.not_view is not None:
            return visit.not_view.value
        return None

    def identify(self, user_id: str | None) -> None:
        """Set the visitor's user (from the app's own authentication, never a cookie's);
        stored when the response has been sent. ``None`` clears it."""
        self._visit.identify(user_id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} session_id={self.session_id!r} skipped={self.skipped!r}>"


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
    """The validated options of either middleware."""
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
