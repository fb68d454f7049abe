"""The visit step both adapters share, with no I/O: the per-request visit and the
tracker's I/O-free half (options are in ``options.py``, counts in ``stats.py``).

An adapter calls :func:`begin` with the request, hands the visit's tracker to the app,
asks :meth:`Visit.respond` for a ``Set-Cookie`` header when the response starts, and
runs :meth:`Visit.finish` (a plan, see ``plans.py``) once the response has been sent.
"""

from __future__ import annotations

import uuid

from sauce_sql import validation
from sauce_sql.models import ReviveSession
from sauce_sql.web.cookie import VisitorCookie, cookie_value
from sauce_sql.web.cookie import set_cookie_header as _set_cookie_header
from sauce_sql.web.options import WebConfig
from sauce_sql.web.rules import Rules, Skip

__all__ = ["TrackerBase", "Visit", "begin"]

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
        """Record the app's user for this visitor; it is stored once the response is sent.
        Clearing the user of a visitor without a cookie records nothing: it has none."""
        user = validation.user_id(user_id)
        if self.skipped is None and (user is not None or self.cookie is not None):
            self.user = user

    def respond(self, status: int, content_type: str) -> str | None:
        """At the response's start: decide whether it is a page view to count, and return
        the ``Set-Cookie`` header value that is due (a new or re-signed cookie), if any."""
        return self.set_cookie() if self.decide(status, content_type) else None

    def decide(self, status: int, content_type: str) -> bool:
        """At the response's start: decide whether it is a page view to count; whether
        the visitor is tracked (then a cookie may be due, see :meth:`cookie_due`)."""
        self.responded = True
        if self.skipped is not None:
            return False
        reason = Rules.not_a_view(self.method, self.headers, status, content_type)
        if reason is None and not self.config.count_views:
            reason = Skip.NOT_AUTOMATIC
        self.not_view = reason
        self.view_due = reason is None and not self.views  # track_visit() counted it already
        return self.tracked

    def set_cookie(self) -> str | None:
        """The ``Set-Cookie`` value a tracked visitor is due, or None."""
        due = self.cookie_due()
        if due is None:
            return None
        value, max_age, secure = due
        config = self.config
        return _set_cookie_header(
            config.cookie_name, value, max_age=max_age, secure=secure, domain=config.cookie_domain
        )

    def cookie_due(self) -> tuple[str, int, bool] | None:
        """The cookie a tracked visitor is due, as (signed value, Max-Age in seconds,
        Secure), for frameworks that set cookies their own way; or None."""
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
        return config.codec.sign(self.session_id, issued), max_age, secure

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
