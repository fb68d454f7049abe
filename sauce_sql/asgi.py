"""Pure ASGI middleware (Starlette, FastAPI, Litestar, Quart) that keeps each visitor's
analytics session in a signed cookie and counts real page views on an ``AsyncStore``.

>>> from sauce_sql.asgi import SauceMiddleware
>>> app.add_middleware(SauceMiddleware, store=store, secret_key=...)  # doctest: +SKIP

The app finds its tracker in ``scope["state"]["sauce"]`` (Starlette's
``request.state.sauce``), WebSocket connections included. Views are counted once the
response has been sent, so the store never delays a page; when the store cannot be
used, pages are served as usual and the failure is logged. On ``lifespan`` the store is
started with the app (a store that cannot start does not stop the app: it is started
on first use later) and closed at shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from datetime import datetime
from typing import Any

from sauce_sql.aio import AsyncStore
from sauce_sql.errors import SauceSQLError
from sauce_sql.models import SequenceType
from sauce_sql.web import plans
from sauce_sql.web.core import TrackerBase, Visit, begin
from sauce_sql.web.options import DEFAULT_COOKIE_MAX_AGE, WANTED_HEADERS, configure
from sauce_sql.web.rules import DEFAULT_PROBE_PATHS, DEFAULT_STATIC_EXTENSIONS, DEFAULT_STATIC_PATHS
from sauce_sql.web.stats import WebState, WebStats

__all__ = ["SauceMiddleware", "Tracker"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WANTED = {name.encode(): name for name in WANTED_HEADERS}


class Tracker(TrackerBase):
    """The visitor of one request or WebSocket, in ``scope["state"]["sauce"]``.

    ``session_id`` and ``skipped`` say who and whether; ``await track_event()`` and
    ``await track_visit()`` count at once (creating the session if need be) and return
    the new sequence number, or 0 on a skipped request or when the store cannot be
    used; ``identify(user_id)`` sets the visitor's user once the response is sent.
    """

    __slots__ = ("_run",)

    def __init__(
        self, visit: Visit, run: Callable[[plans.Plan[int]], Awaitable[int | None]]
    ) -> None:
        super().__init__(visit)
        self._run = run

    async def _count(self, kind: SequenceType) -> int:
        visit = self._visit
        if visit.skipped is not None:
            return 0
        return plans.counted(visit, kind, await self._run(plans.count(visit, kind)))

    async def track_event(self) -> int:
        """Count an event for the visitor; the new event sequence (0 if not counted)."""
        return await self._count(SequenceType.EVENT)

    async def track_visit(self) -> int:
        """Count a page view by hand (for a single-page app's route, an API client); the
        request's own response is then not counted again. The new view sequence."""
        return await self._count(SequenceType.VIEW)


class SauceMiddleware:
    """Keeps each visitor's session and counts its page views on ``store``.

    The options are those of :class:`sauce_sql.wsgi.SauceMiddleware`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: AsyncStore,
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

    async def _run(self, plan: plans.Plan[int]) -> int | None:
        return await plans.run_async(self._guard, self.store, plan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), self._lifespan_send(send))
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name = _WANTED.get(raw_name)
            if name is not None:
                headers[name] = raw_value.decode("latin-1")
        client = scope.get("client")
        visit = begin(
            self.config,
            scope.get("method", "GET"),
            scope.get("path", ""),
            headers,
            client[0] if client else None,
            scope.get("scheme", "http"),
        )
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["sauce"] = Tracker(visit, self._run)
        if visit.skipped is not None:
            self._stats.skip(visit.skipped)
            await self.app(scope, receive, send)
            return
        websocket = kind == "websocket"

        async def sending(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                content_type = ""
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type":
                        content_type = value.decode("latin-1")
                cookie = visit.respond(message["status"], content_type)
                if cookie is not None:
                    message = {
                        **message,
                        "headers": [*message.get("headers", ()), (b"set-cookie", cookie.encode())],
                    }
            elif kind == "websocket.accept":
                visit.responded = True
                cookie = visit.set_cookie() if visit.tracked else None
                if cookie is not None:
                    message = {
                        **message,
                        "headers": [*message.get("headers", ()), (b"set-cookie", cookie.encode())],
                    }
            await send(message)

        await self.app(scope, receive, sending)
        if visit.finish_due:
            await plans.run_async(self._guard, self.store, plans.finish(visit))
        self._stats.add(views=visit.views, events=visit.events)
        reason = visit.unviewed_reason(websocket)
        if reason is not None:
            self._stats.skip(reason)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start()
            return message

        return receiving

    def _lifespan_send(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.store.close()
                self._guard.started = False
            await send(message)

        return sending

    async def _start(self) -> None:
        """Start the store with the app; if it cannot start, the app starts all the same
        and the store is started on first use."""
        try:
            await self.store.start()
        except SauceSQLError as exc:
            self._guard.failed(exc)
        else:
            self._guard.started = True
