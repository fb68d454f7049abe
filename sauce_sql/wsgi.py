"""WSGI middleware (Flask, Django, any WSGI app) that keeps each visitor's analytics
session in a signed cookie and counts real page views on a :class:`sauce_sql.Store`.

>>> from sauce_sql import Store
>>> from sauce_sql.wsgi import SauceMiddleware
>>> def app(environ, start_response):
...     start_response("200 OK", [("Content-Type", "text/html")])
...     return [b"<p>hello</p>"]
>>> app = SauceMiddleware(app, store=Store("sqlite://"), secret_key="change me, 16+ bytes")

The app finds its tracker in ``environ["sauce"]``. Views are counted once the response
has been sent (when the server closes it), so the store never delays a page; when the
store cannot be used, pages are served as usual and the failure is logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

from sauce_sql.models import SequenceType
from sauce_sql.store import Store
from sauce_sql.web import plans
from sauce_sql.web.core import TrackerBase, Visit, begin
from sauce_sql.web.options import DEFAULT_COOKIE_MAX_AGE, ENVIRON_KEYS, configure
from sauce_sql.web.rules import DEFAULT_PROBE_PATHS, DEFAULT_STATIC_EXTENSIONS, DEFAULT_STATIC_PATHS
from sauce_sql.web.stats import WebState, WebStats

__all__ = ["SauceMiddleware", "Tracker"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Tracker(TrackerBase):
    """The visitor of one request, in ``environ["sauce"]``.

    ``session_id`` and ``skipped`` say who and whether; ``track_event()`` and
    ``track_visit()`` count at once (creating the session if need be) and return the new
    sequence number, or 0 on a skipped request or when the store cannot be used;
    ``identify(user_id)`` sets the visitor's user once the response is sent.
    """

    __slots__ = ("_run",)

    def __init__(self, visit: Visit, run: Callable[[plans.Plan[int]], int | None]) -> None:
        super().__init__(visit)
        self._run = run

    def _count(self, kind: SequenceType) -> int:
        visit = self._visit
        if visit.skipped is not None:
            return 0
        return plans.counted(visit, kind, self._run(plans.count(visit, kind)))

    def track_event(self) -> int:
        """Count an event for the visitor; the new event sequence (0 if not counted)."""
        return self._count(SequenceType.EVENT)

    def track_visit(self) -> int:
        """Count a page view by hand (for a single-page app's route, an API client); the
        request's own response is then not counted again. The new view sequence."""
        return self._count(SequenceType.VIEW)


class _Finishing:
    """The app's response, finishing the visit when the server closes it."""

    __slots__ = ("_finish", "_result", "_visit")

    def __init__(
        self, result: Iterable[bytes], finish: Callable[[Visit], None], visit: Visit
    ) -> None:
        self._result = result
        self._finish = finish
        self._visit = visit

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(self._visit)


class SauceMiddleware:
    """Keeps each visitor's session and counts its page views on ``store``.

    Options (keyword-only): ``secret_key`` signs the cookie; ``fallback_keys`` (older
    keys, newest first) still verify it, and a cookie they verify is re-issued under
    ``secret_key``. ``cookie_name``; ``cookie_max_age`` (seconds from issue, at most 400
    days; visits do not extend it; default 395 days: 13 months); ``cookie_domain``;
    ``secure`` (None: on https). ``count_views=False`` leaves counting to
    ``track_visit()``. ``client_ip``: ``"masked"`` (default), ``"full"`` or ``"none"``;
    ``trusted_proxies`` whose ``X-Forwarded-For`` is believed. ``honor_gpc`` skips
    requests sending ``Sec-GPC: 1``; ``skip_headless``; ``probe_paths``,
    ``static_paths`` (prefixes) and ``static_extensions`` name what is never a page.
    ``retry_after``: seconds to leave a failed store alone (doubling up to 30 s).
    ``clock``: aware UTC datetimes, for tests.

    The store is started on first use if it is not yet; close it at shutdown.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        store: Store,
        secret_key: str | bytes,
        fallback_keys: Sequence[str | bytes] = (),
        cookie_name: str = "sauce",
        cookie_max_age: float = DEFAULT_COOKIE_MAX_AGE,
        cookie_domain: str | None = None,
        secure: bool | None = None,
        count_views: bool = True,
        client_ip: str = "masked",
        trusted_proxies: Sequence[str] = (),
        honor_gpc: bool = False,
        skip_headless: bool = True,
        probe_paths: Sequence[str] = DEFAULT_PROBE_PATHS,
        static_paths: Sequence[str] = DEFAULT_STATIC_PATHS,
        static_extensions: Sequence[str] = DEFAULT_STATIC_EXTENSIONS,
        retry_after: float = 1.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.config = configure(
            secret_key=secret_key,
            fallback_keys=fallback_keys,
            cookie_name=cookie_name,
            cookie_max_age=cookie_max_age,
            cookie_domain=cookie_domain,
            secure=secure,
            count_views=count_views,
            client_ip=client_ip,
            trusted_proxies=trusted_proxies,
            honor_gpc=honor_gpc,
            skip_headless=skip_headless,
            probe_paths=probe_paths,
            static_paths=static_paths,
            static_extensions=static_extensions,
            retry_after=retry_after,
            clock=clock,
        )
        self._stats = WebStats()
        self._guard = plans.Guard(self._stats, retry_after)

    def get_state(self) -> WebState:
        """Views and events counted, requests skipped per reason, store failures."""
        return self._stats.snapshot()

    def _run(self, plan: plans.Plan[int]) -> int | None:
        return plans.run(self._guard, self.store, plan)

    def _finish(self, visit: Visit) -> None:
        if visit.finish_due:
            plans.run(self._guard, self.store, plans.finish(visit))
        self._stats.add(views=visit.views, events=visit.events)
        reason = visit.unviewed_reason()
        if reason is not None:
            self._stats.skip(reason)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        headers = {name: environ[key] for name, key in ENVIRON_KEYS if key in environ}
        visit = begin(
            self.config,
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("PATH_INFO", ""),
            headers,
            environ.get("REMOTE_ADDR"),
            environ.get("wsgi.url_scheme", "http"),
        )
        environ["sauce"] = Tracker(visit, self._run)
        if visit.skipped is not None:
            self._stats.skip(visit.skipped)
            return self.app(environ, start_response)

        def starting(
            status: str, response_headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            content_type = ""
            for name, value in response_headers:
                if name.lower() == "content-type":
                    content_type = value
            try:
                code = int(status[:3])
            except ValueError:
                code = 500
            cookie = visit.respond(code, content_type)
            if cookie is not None:
                response_headers = [*response_headers, ("Set-Cookie", cookie)]
            return start_response(status, response_headers, exc_info)

        return _Finishing(self.app(environ, starting), self._finish, visit)
