"""Django middleware, sync and async, configured in ``settings.py``.

>>> MIDDLEWARE = [..., "sauce_sql.django.SauceMiddleware"]  # doctest: +SKIP
>>> SAUCE_SQL = {"URL": "sqlite:///sessions.db"}  # doctest: +SKIP

``SAUCE_SQL`` holds ``URL`` (with ``STORE_OPTIONS``, the store's keyword options) or
``STORE`` (a store of your own), and ``OPTIONS``: the options of
:class:`sauce_sql.wsgi.SauceMiddleware`. The cookie is signed with ``SECRET_KEY`` (under
a salt of its own) and ``SECRET_KEY_FALLBACKS`` verify it, unless ``OPTIONS`` names
``secret_key`` / ``fallback_keys``.

Django serves the middleware sync under WSGI and async under ASGI. Sync, it keeps the
sessions on a :class:`sauce_sql.Store`; async, on an :class:`sauce_sql.AsyncStore`, so
that no call holds the event loop (a ``STORE`` given must be the matching kind). Views
find the visitor in ``request.sauce``: ``session_id``, ``skipped``,
``identify(user_id)``, and ``track_event()`` / ``track_visit()`` with their async twins
``atrack_event()`` / ``atrack_visit()``, usable from sync and async views in either mode.
Views are counted when Django closes the response, once it has been sent.

A ``SAUCE_SQL`` of the wrong shape (a key unknown, no ``URL``, a store of the other
mode) is ``ImproperlyConfigured``; a bad value in it is what the store or the WSGI
middleware would raise for it (``InvalidInput``, ``TypeError``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
from collections.abc import Callable
from typing import Any, ClassVar

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase

from sauce_sql.aio import AsyncStore
from sauce_sql.models import SequenceType
from sauce_sql.store import Store
from sauce_sql.web import plans
from sauce_sql.web.core import TrackerBase, Visit, begin
from sauce_sql.web.options import DEFAULT_COOKIE_MAX_AGE, ENVIRON_KEYS, configure
from sauce_sql.web.rules import DEFAULT_PROBE_PATHS, DEFAULT_STATIC_EXTENSIONS, DEFAULT_STATIC_PATHS
from sauce_sql.web.stats import WebState, WebStats

__all__ = ["SauceMiddleware", "Tracker"]

# How long a closing response's thread waits for its count (the store's own calls are
# bounded by its timeout; this only keeps a wedged loop from holding the thread).
_FINISH_WAIT = 60.0
_SETTINGS = frozenset({"URL", "STORE", "STORE_OPTIONS", "OPTIONS"})
_DEFAULTS: dict[str, Any] = {
    "fallback_keys": (),
    "cookie_name": "sauce",
    "cookie_max_age": DEFAULT_COOKIE_MAX_AGE,
    "cookie_domain": None,
    "secure": None,
    "count_views": True,
    "client_ip": "masked",
    "trusted_proxies": (),
    "honor_gpc": False,
    "skip_headless": True,
    "probe_paths": DEFAULT_PROBE_PATHS,
    "static_paths": DEFAULT_STATIC_PATHS,
    "static_extensions": DEFAULT_STATIC_EXTENSIONS,
    "retry_after": 1.0,
    "clock": None,
}


class Tracker(TrackerBase):
    """The visitor of one request, in ``request.sauce``.

    ``track_event()`` / ``track_visit()`` count at once (creating the session if need
    be) and return the new sequence number, or 0 on a skipped request or when the store
    cannot be used; ``atrack_event()`` / ``atrack_visit()`` are the same, awaited.
    ``identify(user_id)`` sets the visitor's user once the response is sent.
    """

    __slots__ = ("_middleware",)

    def __init__(self, visit: Visit, middleware: SauceMiddleware) -> None:
        super().__init__(visit)
        self._middleware = middleware

    def _count(self, kind: SequenceType) -> int:
        visit = self._visit
        if visit.skipped is not None:
            return 0
        return plans.counted(visit, kind, self._middleware.run(plans.count(visit, kind)))

    async def _acount(self, kind: SequenceType) -> int:
        visit = self._visit
        if visit.skipped is not None:
            return 0
        value = await self._middleware.arun(plans.count(visit, kind))
        return plans.counted(visit, kind, value)

    def track_event(self) -> int:
        """Count an event for the visitor; the new event sequence (0 if not counted)."""
        return self._count(SequenceType.EVENT)

    def track_visit(self) -> int:
        """Count a page view by hand (for a single-page app's route, an API client); the
        request's own response is then not counted again. The new view sequence."""
        return self._count(SequenceType.VIEW)

    async def atrack_event(self) -> int:
        """:meth:`track_event`, awaited."""
        return await self._acount(SequenceType.EVENT)

    async def atrack_visit(self) -> int:
        """:meth:`track_visit`, awaited."""
        return await self._acount(SequenceType.VIEW)


class SauceMiddleware:
    """Keeps each visitor's session and counts its page views, from ``settings.SAUCE_SQL``.

    ``latest`` is the middleware Django built last in this process (one per handler),
    for its :meth:`get_state`.
    """

    sync_capable = True
    async_capable = True
    latest: ClassVar[SauceMiddleware | None] = None

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.store, options = _configured(self.is_async)
        retry_after = options["retry_after"]
        self.config = configure(**options)
        self._stats = WebStats()
        self._guard = plans.Guard(self._stats, retry_after)
        SauceMiddleware.latest = self

    def get_state(self) -> WebState:
        """Views and events counted, requests skipped per reason, store failures."""
        return self._stats.snapshot()

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        visit = self._begin(request)
        if visit.skipped is not None:
            return self.get_response(request)
        response: HttpResponseBase = self.get_response(request)
        self._respond(visit, response)
        _on_close(response, lambda: self._finish(visit))
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        visit = self._begin(request)
        if visit.skipped is not None:
            skipped: HttpResponseBase = await self.get_response(request)
            return skipped
        response: HttpResponseBase = await self.get_response(request)
        self._respond(visit, response)
        loop = asyncio.get_running_loop()
        _on_close(response, lambda: self._finish_on(loop, visit))
        return response

    def _begin(self, request: HttpRequest) -> Visit:
        meta = request.META
        headers = {name: meta[key] for name, key in ENVIRON_KEYS if key in meta}
        visit = begin(
            self.config,
            request.method or "GET",
            request.path_info,
            headers,
            meta.get("REMOTE_ADDR"),
            request.scheme or "http",
        )
        request.sauce = Tracker(visit, self)
        if visit.skipped is not None:
            self._stats.skip(visit.skipped)
        return visit

    def _respond(self, visit: Visit, response: HttpResponseBase) -> None:
        if not visit.decide(response.status_code, response.get("Content-Type", "")):
            return
        due = visit.cookie_due()
        if due is not None:
            value, max_age, secure = due
            response.set_cookie(
                self.config.cookie_name,
                value,
                max_age=max_age,
                path="/",
                domain=self.config.cookie_domain,
                secure=secure,
                httponly=True,
                samesite="Lax",
            )

    def _finish(self, visit: Visit) -> None:
        if visit.finish_due:
            self.run(plans.finish(visit))
        self._tally(visit)

    def _finish_on(self, loop: asyncio.AbstractEventLoop, visit: Visit) -> None:
        # Django's ASGI handler closes the response from a thread of the request's own
        # (its ThreadSensitiveContext) and awaits that: the count runs on the loop the
        # store lives on while the thread waits, so the request ends once it is stored
        # (a server's graceful shutdown waits for it) and other requests go on.
        if not visit.finish_due:
            self._tally(visit)
            return
        future = asyncio.run_coroutine_threadsafe(self._afinish(visit), loop)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:  # never wait on the loop's own thread
            concurrent.futures.wait([future], timeout=_FINISH_WAIT)

    async def _afinish(self, visit: Visit) -> None:
        await self.arun(plans.finish(visit))
        self._tally(visit)

    def _tally(self, visit: Visit) -> None:
        self._stats.add(views=visit.views, events=visit.events)
        reason = visit.unviewed_reason()
        if reason is not None:
            self._stats.skip(reason)

    def run(self, plan: plans.Plan[Any]) -> Any:
        """Drive a store plan from sync code (a sync view, or the response's close)."""
        if not self.is_async:
            return plans.run(self._guard, self.store, plan)
        return async_to_sync(self.arun)(plan)

    async def arun(self, plan: plans.Plan[Any]) -> Any:
        """Drive a store plan from async code."""
        if self.is_async:
            return await plans.run_async(self._guard, self.store, plan)
        return await sync_to_async(self.run, thread_sensitive=False)(plan)


def _on_close(response: HttpResponseBase, callback: Callable[[], None]) -> None:
    """Run ``callback`` when Django closes ``response``, after the server has sent it.
    Django has no public hook for this per response; its own ``FileResponse`` closes
    its file through this list, which ``HttpResponseBase.close()`` runs (Django 3.0+)."""
    response._resource_closers.append(callback)  # noqa: SLF001


def _configured(is_async: bool) -> tuple[Any, dict[str, Any]]:
    """The store and the middleware options ``settings.SAUCE_SQL`` asks for."""
    conf = getattr(settings, "SAUCE_SQL", None)
    if not isinstance(conf, dict):
        raise ImproperlyConfigured(
            'sauce_sql.django.SauceMiddleware needs settings.SAUCE_SQL = {"URL": ...}'
        )
    unknown = sorted(set(conf) - _SETTINGS)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.SAUCE_SQL has unknown keys {unknown}; it takes {sorted(_SETTINGS)}"
        )
    kind: type[Store] | type[AsyncStore] = AsyncStore if is_async else Store
    store = conf.get("STORE")
    if store is None:
        url = conf.get("URL")
        if not isinstance(url, str):
            raise ImproperlyConfigured('settings.SAUCE_SQL needs "URL" (a database URL) or "STORE"')
        store = kind(url, **conf.get("STORE_OPTIONS", {}))
        if isinstance(store, Store):
            atexit.register(store.close)
    elif not isinstance(store, kind):
        mode = "async (ASGI)" if is_async else "sync (WSGI)"
        raise ImproperlyConfigured(
            f'settings.SAUCE_SQL["STORE"] must be a sauce_sql.{kind.__name__}: Django '
            f"runs this middleware {mode}"
        )
    options = dict(_DEFAULTS)
    given = conf.get("OPTIONS", {})
    unknown = sorted(set(given) - set(_DEFAULTS) - {"secret_key"})
    if unknown:
        raise ImproperlyConfigured(f'settings.SAUCE_SQL["OPTIONS"] has unknown options {unknown}')
    options.update(given)
    options.setdefault("secret_key", getattr(settings, "SECRET_KEY", None))
    if "fallback_keys" not in given:
        options["fallback_keys"] = tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ())
    if not options["secret_key"]:
        raise ImproperlyConfigured("sauce_sql.django.SauceMiddleware needs settings.SECRET_KEY")
    return store, options
