"""Web test apps (Flask for WSGI, Starlette for ASGI, the same routes) and a sync facade
over both middlewares, so one suite of rules runs on each adapter.

Routes: ``/`` an HTML page showing the tracker (``sid=... skipped=...``), ``/api``
JSON, ``/missing`` a 404 page, ``/go`` a redirect, ``/event`` and ``/visit`` count by
hand (JSON with the new sequence), ``/login`` identifies the user given as ``?user=``,
``/assets/app.css`` and ``/health`` are skipped by path.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa

import sauce_sql
from sauce_sql import Store

T = TypeVar("T")
SECRET = "a secret key of the tests, 32 bytes"
OLD_SECRET = "the key before it, also 32 bytes!"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
PAGE = re.compile(r"sid=([^\s<]+) skipped=([^\s<]+)")
ADAPTERS = ["wsgi", "asgi", "django-wsgi", "django-asgi"]
#: In CI (SAUCE_SQL_REQUIRE_PG=1) a missing browser fails the browser test instead of skipping.
REQUIRE_BROWSER = os.environ.get("SAUCE_SQL_REQUIRE_PG") == "1"


def page_html(tracker: Any) -> str:
    """What ``/`` shows: the tracker as the app sees it."""
    return f"<html><body><p>sid={tracker.session_id} skipped={tracker.skipped}</p></body></html>"


def flask_app(**options: Any) -> Any:
    """A Flask app behind ``sauce_sql.wsgi.SauceMiddleware(..., **options)``."""
    import flask

    from sauce_sql.wsgi import SauceMiddleware

    app = flask.Flask("sauce_web_tests")

    def tracker() -> Any:
        return flask.request.environ["sauce"]

    @app.route("/", methods=["GET", "POST", "HEAD", "OPTIONS"])
    def page() -> str:
        return page_html(tracker())

    @app.get("/api")
    def api() -> Any:
        return {"sid": tracker().session_id}

    @app.get("/missing")
    def missing() -> Any:
        return page_html(tracker()), 404

    @app.get("/go")
    def go() -> Any:
        return flask.redirect("/")

    @app.route("/event", methods=["GET", "POST"])
    def event() -> Any:
        return {"event": tracker().track_event()}

    @app.get("/visit")
    def visit() -> Any:
        return {"view": tracker().track_visit()}

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        tracker().identify(flask.request.args.get("user") or None)
        return page_html(tracker())

    @app.get("/assets/app.css")
    def css() -> Any:
        return "body {}", 200, {"Content-Type": "text/css"}

    @app.get("/health")
    def health() -> Any:
        return "ok", 200, {"Content-Type": "text/plain"}

    app.wsgi_app = SauceMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def starlette_app(**options: Any) -> Any:
    """A Starlette app with ``sauce_sql.asgi.SauceMiddleware`` added with ``options``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import (
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
    )
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    from sauce_sql.asgi import SauceMiddleware

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html(request.state.sauce))

    async def api(request: Request) -> Response:
        return JSONResponse({"sid": request.state.sauce.session_id})

    async def missing(request: Request) -> Response:
        return HTMLResponse(page_html(request.state.sauce), status_code=404)

    async def go(request: Request) -> Response:
        return RedirectResponse("/")

    async def event(request: Request) -> Response:
        return JSONResponse({"event": await request.state.sauce.track_event()})

    async def visit(request: Request) -> Response:
        return JSONResponse({"view": await request.state.sauce.track_visit()})

    async def login(request: Request) -> Response:
        request.state.sauce.identify(request.query_params.get("user") or None)
        return HTMLResponse(page_html(request.state.sauce))

    async def css(request: Request) -> Response:
        return Response("body {}", media_type="text/css")

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def socket(websocket: WebSocket) -> None:
        tracker = websocket.scope["state"]["sauce"]
        event = await tracker.track_event()
        await websocket.accept()
        await websocket.send_json({"sid": tracker.session_id, "event": event})
        await websocket.close()

    methods = ["GET", "POST", "HEAD", "OPTIONS"]
    app = Starlette(
        routes=[
            Route("/", page, methods=methods),
            Route("/api", api),
            Route("/missing", missing),
            Route("/go", go),
            Route("/event", event, methods=["GET", "POST"]),
            Route("/visit", visit),
            Route("/login", login, methods=["GET", "POST"]),
            Route("/assets/app.css", css),
            Route("/health", health),
            WebSocketRoute("/ws", socket),
        ]
    )
    app.add_middleware(SauceMiddleware, **options)
    return app


def async_store_class() -> Any:
    """``sauce_sql.AsyncStore``, or None while this checkout has none."""
    return getattr(sauce_sql, "AsyncStore", None)


class LoopThread:
    """An event loop on a thread of its own, for driving async code from sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and join its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Site:
    """One app behind one middleware on one store, and a way to visit it.

    ``visitor()`` is a client with its own cookie jar; ``get`` on it returns the
    response. ``middleware`` is the SauceMiddleware instance, ``rows()`` the table's rows.
    """

    def __init__(self, adapter: str, url: str, table: str, **options: Any) -> None:
        self.adapter, self.url, self.table = adapter, url, table
        self.loop: LoopThread | None = None
        store_options = {
            "table_name": table,
            "clean_interval": None,
            **options.pop("store_options", {}),
        }
        start = options.pop("start_store", True)
        if adapter == "wsgi":
            self.store: Any = Store(url, **store_options)
            if start:
                self.store.start()
            self.app = flask_app(store=self.store, **options)
            self.middleware = self.app.wsgi_app
        elif adapter == "django-wsgi":
            from _django_site import handler

            from sauce_sql.django import SauceMiddleware

            self.store = Store(url, **store_options)
            if start:
                self.store.start()
            self.app = handler(adapter, self.store, **options)
            self.middleware = SauceMiddleware.latest
        elif adapter == "django-asgi":
            from _django_site import handler

            from sauce_sql.django import SauceMiddleware

            # Django's ASGI handler, driven on a loop; the store is a Store all the same.
            self.loop = LoopThread()
            self.store = Store(url, **store_options)
            if start:
                self.store.start()
            self.app = handler(adapter, self.store, **options)
            self.middleware = SauceMiddleware.latest
        else:
            async_store = async_store_class()
            assert async_store is not None, "no AsyncStore in sauce_sql yet"
            self.loop = LoopThread()
            self.store = async_store(url, **store_options)
            try:
                if start:
                    self.loop.run(self.store.start())
                self.app = starlette_app(store=self.store, **options)
                # Starlette builds its middleware at the first request or lifespan; build
                # it now, so that refused options raise here as they do for WSGI.
                self.app.middleware_stack = self.app.build_middleware_stack()
            except BaseException:
                self.close()
                raise
            self.middleware = None

    def visitor(self, base_url: str = "http://testserver", **headers: str) -> Visitor:
        """A new visitor (an empty cookie jar), sending ``headers`` on every request."""
        return Visitor(self, base_url, headers)

    def state(self) -> Any:
        """The middleware's ``get_state()``."""
        if self.middleware is None:
            self.middleware = _find_middleware(self.app)
        return self.middleware.get_state()

    def rows(self) -> list[dict[str, Any]]:
        """Every row of the session table, as dicts."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as connection:
                result = connection.execute(sa.text(f"SELECT * FROM {self.table}"))
                return [dict(row._mapping) for row in result]
        finally:
            engine.dispose()

    def row(self, session_id: str) -> dict[str, Any]:
        """The row of ``session_id`` (it must be there)."""
        (row,) = [r for r in self.rows() if r["session_id"] == session_id]
        return row

    def empty_table(self) -> None:
        """Delete every row, as a lost or restored-from-nothing database would."""
        engine = sa.create_engine(self.url)
        try:
            with engine.begin() as connection:
                connection.execute(sa.text(f"DELETE FROM {self.table}"))
        finally:
            engine.dispose()

    def close(self) -> None:
        """Close the store (and the loop). Idempotent."""
        if self.loop is None or self.adapter == "django-asgi":
            self.store.close()
        elif not self.loop.loop.is_closed():
            self.loop.run(self.store.close())
        if self.loop is not None and not self.loop.loop.is_closed():
            self.loop.close()


def _find_middleware(app: Any) -> Any:
    """The SauceMiddleware inside a built Starlette middleware stack."""
    from sauce_sql.asgi import SauceMiddleware

    node = app.middleware_stack
    while node is not None and not isinstance(node, SauceMiddleware):
        node = getattr(node, "app", None)
    assert node is not None, "the app has no SauceMiddleware"
    return node


class Visitor:
    """A client with its own cookie jar, on either adapter."""

    def __init__(self, site: Site, base_url: str, headers: dict[str, str]) -> None:
        self.site = site
        headers.setdefault("user-agent", FIREFOX)
        if site.loop is None:
            transport: Any = httpx.WSGITransport(app=site.app)
            self._sync = httpx.Client(transport=transport, base_url=base_url, headers=headers)
        else:
            transport = httpx.ASGITransport(app=site.app)
            self._async = httpx.AsyncClient(transport=transport, base_url=base_url, headers=headers)

    @property
    def cookies(self) -> httpx.Cookies:
        """The visitor's cookie jar."""
        return self._sync.cookies if self.site.loop is None else self._async.cookies

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send one request; the response, read."""
        if self.site.loop is None:
            return self._sync.request(method, path, **kwargs)
        return self.site.loop.run(self._async.request(method, path, **kwargs))

    async def arequest(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The same, awaited on the site's loop (ASGI only)."""
        return await self._async.request(method, path, **kwargs)

    def get(self, path: str = "/", **kwargs: Any) -> httpx.Response:
        """GET ``path``."""
        return self.request("GET", path, **kwargs)


def shown(response: httpx.Response) -> tuple[str | None, str | None]:
    """The session id and skip reason the page shows (None for "None")."""
    match = PAGE.search(response.text)
    assert match is not None, response.text
    sid, skipped = match.groups()
    return (None if sid == "None" else sid, None if skipped == "None" else skipped)


@contextmanager
def site(adapter: str, url: str, table: str, **options: Any) -> Iterator[Site]:
    """A :class:`Site`, closed afterwards."""
    made = Site(adapter, url, table, **options)
    try:
        yield made
    finally:
        made.close()


def run_all(loop: LoopThread, coroutines: list[Awaitable[T]]) -> list[T]:
    """Run ``coroutines`` at once on ``loop``; their results in order."""

    async def gather() -> list[T]:
        return list(await asyncio.gather(*coroutines))

    return loop.run(gather(), timeout=300)


Factory = Callable[..., Site]
