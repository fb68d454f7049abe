"""Django middleware, sync and async, configured in ``settings.py``.

>>> MIDDLEWARE = [..., "sauce_sql.django.SauceMiddleware"]  # doctest: +SKIP
>>> SAUCE_SQL = {"URL": "sqlite:///sessions.db"}  # doctest: +SKIP

``SAUCE_SQL`` holds ``URL`` (with ``STORE_OPTIONS``, the store's keyword options) or
``STORE`` (a store of your own), and ``OPTIONS``: the options of
:class:`sauce_sql.wsgi.SauceMiddleware`. The cookie is signed with ``SECRET_KEY`` (under
a salt of its own) and ``SECRET_KEY_FALLBACKS`` verify it, unless ``OPTIONS`` names
``secret_key`` / ``fallback_keys``.

Django serves the middleware sync under WSGI and async under ASGI; either way the
sessions are kept on a :class:`sauce_sql.Store`, one per process for each ``URL`` and
``STORE_OPTIONS`` (so the test clients of a test suite share it), whose calls run in
Django's own threads (the one closing the response, a sync view's), never on the
event loop. Views find the visitor in ``request.sauce``: ``session_id``, ``skipped``,
``identify(user_id)``, and ``track_event()`` / ``track_visit()`` with their async twins
``atrack_event()`` / ``atrack_visit()``, usable from sync and async views and from
threads they start. Views are counted when Django closes the response, once it has
been sent. List the middleware first in ``MIDDLEWARE``: a middleware outside it that
replaces the response (``ConditionalGetMiddleware``'s 304) would keep its cookie and
drop its count.

A ``SAUCE_SQL`` of the wrong shape (a key unknown, no ``URL``, a store that is no
``Store``) is ``ImproperlyConfigured``; a bad value in it is what the store or the WSGI
middleware would raise for it (``InvalidInput``, ``TypeError``).
"""

from __future__ import annotations

import atexit
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import patch_vary_headers

from sauce_sql.models import SequenceType
from sauce_sql.store import Store
from sauce_sql.web import plans
from sauce_sql.web.core import TrackerBase, Visit, begin
from sauce_sql.web.options import ENVIRON_KEYS, configure
from sauce_sql.web.stats import WebState, WebStats
from sauce_sql.wsgi import SauceMiddleware as WSGIMiddleware

__all__ = ["SauceMiddleware", "Tracker"]

logger = logging.getLogger("sauce_sql.web")
# Counts running at once after responses. Under ASGI each closing response has a
# thread of its own; while a database hangs (before its first failure trips the
# back-off, at the store's timeout) they would pile up by the hundred: once this many
# run and none has finished for two seconds, counts are dropped
# (``get_state().dropped``) rather than another thread held. A store that answers,
# however many wait for its connections, finishes counts all the time, but not
# evenly: a busy disk's fsync can leave none finishing for a few hundred milliseconds,
# and a shorter wait than this dropped counts of a working store.
_MAX_IN_FLIGHT = 32
_STALLED_AFTER = 2.0
_STORES: dict[tuple[str, str], Store] = {}
_STORES_LOCK = threading.Lock()
_SETTINGS = frozenset({"URL", "STORE", "STORE_OPTIONS", "OPTIONS"})
# The WSGI middleware's options and their defaults, read off its signature so that the
# two adapters cannot drift apart (the store and the key come from the settings).
_DEFAULTS: dict[str, Any] = {
    name: parameter.default
    for name, parameter in inspect.signature(WSGIMiddleware.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("store", "secret_key")
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
        self.store, options = _configured()
        retry_after = options["retry_after"]
        self.config = configure(**options)
        self._stats = WebStats()
        self._guard = plans.Guard(self._stats, retry_after)
        self._in_flight: dict[object, float] = {}  # counts running, when each began
        self._flight_lock = threading.Lock()
        self._finished_at = 0.0  # when the last count finished
        self._overloaded = False
        _check_order()
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
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        visit = self._begin(request)
        response: HttpResponseBase = await self.get_response(request)
        if visit.skipped is None:
            self._respond(visit, response)
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
        # Django's own closing runs the count, in the thread that closes the response
        # once it has been sent (under ASGI, one of the request's own, awaited).
        _on_close(response, _Closer(self, visit))
        if not visit.decide(response.status_code, response.get("Content-Type", "")):
            return
        due = visit.cookie_due()
        name = self.config.cookie_name
        if due is None or name in response.cookies:  # the app's own cookie of that name wins
            return
        value, max_age, secure = due
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            domain=self.config.cookie_domain,
            secure=secure,
            httponly=True,
            samesite="Lax",
        )
        # As Django's session middleware does: a cache must not hand this response,
        # and its cookie, to a visitor with other cookies.
        patch_vary_headers(response, ("Cookie",))

    def finish(self, visit: Visit) -> None:
        """Store what the visit left to store, once its response has been sent."""
        if visit.finish_due:
            if self._stalled():
                self._drop()
            else:
                token = object()
                with self._flight_lock:
                    self._in_flight[token] = time.monotonic()
                try:
                    self.run(plans.finish(visit))
                finally:
                    with self._flight_lock:
                        del self._in_flight[token]
                        self._finished_at = time.monotonic()
        self._stats.add(views=visit.views, events=visit.events)
        reason = visit.unviewed_reason()
        if reason is not None:
            self._stats.skip(reason)

    def _stalled(self) -> bool:
        # Many counts running and none finished for long (the newest of the last finish
        # and the oldest start): the store hangs, its calls failing only at its timeout.
        with self._flight_lock:
            if len(self._in_flight) < _MAX_IN_FLIGHT:
                return False
            progress = max(self._finished_at, min(self._in_flight.values()))
        return time.monotonic() - progress > _STALLED_AFTER

    def _drop(self) -> None:
        self._guard.drop()
        first, self._overloaded = not self._overloaded, True
        if first:
            logger.warning(
                "sauce_sql: %d or more counts are waiting for the analytics store and none "
                "has finished for %.1f s; later ones are dropped while it hangs "
                "(get_state().dropped)",
                _MAX_IN_FLIGHT,
                _STALLED_AFTER,
            )

    def run(self, plan: plans.Plan[Any]) -> Any:
        """Drive a store plan (from a sync view, a thread, or the response's close)."""
        return plans.run(self._guard, self.store, plan)

    async def arun(self, plan: plans.Plan[Any]) -> Any:
        """Drive a store plan from async code, in a worker thread."""
        return await sync_to_async(self.run, thread_sensitive=False)(plan)


class _Closer:
    """The count of one visit, run when Django closes its response. Pickled (the
    per-site cache pickles responses) it is nothing: a cached copy counts nothing of
    the visit that made it; each request served from the cache has its own."""

    __slots__ = ("_middleware", "_visit")

    def __init__(self, middleware: SauceMiddleware, visit: Visit) -> None:
        self._middleware = middleware
        self._visit = visit

    def __call__(self) -> None:
        self._middleware.finish(self._visit)

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return (_nothing, ())


def _nothing() -> None:
    """What a pickled :class:`_Closer` becomes."""


def _on_close(response: HttpResponseBase, callback: Callable[[], None]) -> None:
    """Run ``callback`` when Django closes ``response``, after the server has sent it.
    Django has no public hook for this per response; its own ``FileResponse`` closes
    its file through this list, which ``HttpResponseBase.close()`` runs (Django 3.0+)."""
    response._resource_closers.append(callback)  # noqa: SLF001


def _configured() -> tuple[Store, dict[str, Any]]:
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
    for key in ("STORE_OPTIONS", "OPTIONS"):
        if not isinstance(conf.get(key, {}), dict):
            raise ImproperlyConfigured(f'settings.SAUCE_SQL["{key}"] must be a dict')
    store = conf.get("STORE")
    if store is not None:
        if "URL" in conf or "STORE_OPTIONS" in conf:
            raise ImproperlyConfigured(
                'settings.SAUCE_SQL takes "URL" (and "STORE_OPTIONS") or "STORE", not both'
            )
        if not isinstance(store, Store):
            raise ImproperlyConfigured(
                'settings.SAUCE_SQL["STORE"] must be a sauce_sql.Store (Django runs it in '
                f"its threads, never on the event loop), not {type(store).__name__}"
            )
    else:
        url = conf.get("URL")
        if not isinstance(url, str):
            raise ImproperlyConfigured('settings.SAUCE_SQL needs "URL" (a database URL) or "STORE"')
        store = _shared_store(url, conf.get("STORE_OPTIONS", {}))
    options = dict(_DEFAULTS)
    given = conf.get("OPTIONS", {})
    unknown = sorted(set(given) - set(_DEFAULTS) - {"secret_key"})
    if unknown:
        raise ImproperlyConfigured(f'settings.SAUCE_SQL["OPTIONS"] has unknown options {unknown}')
    options.update(given)
    options.setdefault("secret_key", getattr(settings, "SECRET_KEY", None))
    if "fallback_keys" not in given:
        fallbacks = getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ()
        if isinstance(fallbacks, (str, bytes)):
            raise ImproperlyConfigured("settings.SECRET_KEY_FALLBACKS must be a list of keys")
        options["fallback_keys"] = tuple(fallbacks)
    if not options["secret_key"]:
        raise ImproperlyConfigured("sauce_sql.django.SauceMiddleware needs settings.SECRET_KEY")
    return store, options


#: Middlewares that replace the response they are given: outside this one, the response
#: it counted on is dropped unclosed while its cookie goes out with the new one.
_REPLACING = ("django.middleware.http.ConditionalGetMiddleware",)


def _check_order() -> None:
    """Warn when a middleware that replaces responses runs outside this one."""
    names = list(getattr(settings, "MIDDLEWARE", None) or ())
    ours = "sauce_sql.django.SauceMiddleware"
    if ours not in names:
        return
    outer = [name for name in names[: names.index(ours)] if name in _REPLACING]
    if outer:
        logger.warning(
            "sauce_sql: list %s before %s in MIDDLEWARE: a 304 it makes of a counted page "
            "would keep the visitor's cookie and lose the count",
            ours,
            ", ".join(outer),
        )


def _shared_store(url: str, store_options: dict[str, Any]) -> Store:
    """The process's store for ``url`` and ``store_options``, made on first use (every
    middleware Django builds, a test client's included, shares it); closed at exit."""
    key = (url, repr(sorted(store_options.items())))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = Store(url, **store_options)
            atexit.register(store.close)
        return store
