"""A Django project for the web tests, in one module: its settings, its views (the same
routes as the Flask and Starlette test apps of ``_web``) and its handlers.

``handler(adapter, store, **options)`` builds Django's own WSGI or ASGI handler with
``sauce_sql.django.SauceMiddleware`` reading ``settings.SAUCE_SQL``; the settings are
those of the process (configured on first use), overridden while the handler is built.
``from_env()`` is the same app for real servers (gunicorn, uvicorn), configured by the
environment like ``_web_apps``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.test.utils import override_settings
from django.urls import path


def _page(request: HttpRequest, status: int = 200) -> HttpResponse:
    tracker = request.sauce
    html = f"<html><body><p>sid={tracker.session_id} skipped={tracker.skipped}</p></body></html>"
    return HttpResponse(html, status=status)


def page(request: HttpRequest) -> HttpResponse:
    return _page(request)


def api(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"sid": request.sauce.session_id})


def missing(request: HttpRequest) -> HttpResponse:
    return _page(request, 404)


def go(request: HttpRequest) -> HttpResponse:
    return HttpResponseRedirect("/")


def event(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"event": request.sauce.track_event()})


def visit(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"view": request.sauce.track_visit()})


async def aevent(request: HttpRequest) -> HttpResponse:
    value = await request.sauce.atrack_event()
    return JsonResponse({"event": value})


async def apage(request: HttpRequest) -> HttpResponse:
    return _page(request)


def thread_event(request: HttpRequest) -> HttpResponse:
    """An event counted from a thread the view starts."""
    import threading

    got: list[int] = []
    worker = threading.Thread(target=lambda: got.append(request.sauce.track_event()))
    worker.start()
    worker.join(30)
    return JsonResponse({"event": got[0] if got else None})


def stream(request: HttpRequest) -> HttpResponse:
    """A streamed HTML page."""
    from django.http import StreamingHttpResponse

    return StreamingHttpResponse(iter([b"<html><body>", b"streamed</body></html>"]))


def own_cookie(request: HttpRequest) -> HttpResponse:
    """A page that sets a cookie of the middleware's name itself."""
    response = _page(request)
    response.set_cookie("sauce", "the app's own")
    return response


def login(request: HttpRequest) -> HttpResponse:
    request.sauce.identify(request.GET.get("user") or None)
    return _page(request)


def css(request: HttpRequest) -> HttpResponse:
    return HttpResponse("body {}", content_type="text/css")


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("", page),
    path("api", api),
    path("missing", missing),
    path("go", go),
    path("event", event),
    path("aevent", aevent),
    path("apage", apage),
    path("visit", visit),
    path("login", login),
    path("thread-event", thread_event),
    path("own-cookie", own_cookie),
    path("stream", stream),
    path("assets/app.css", css),
    path("health", health),
]


def configure() -> None:
    """Configure this process's Django settings once: this module is the URLconf."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("SAUCE_WEB_SECRET", "a Django secret key of the tests"),
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["sauce_sql.django.SauceMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()


def handler(adapter: str, store: Any, **options: Any) -> Any:
    """Django's WSGI (``"django-wsgi"``) or ASGI (``"django-asgi"``) handler over
    ``store``, the middleware's ``OPTIONS`` being ``options``; ``secret_key`` and
    ``fallback_keys`` become ``SECRET_KEY`` and ``SECRET_KEY_FALLBACKS``."""
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    configure()
    overrides: dict[str, Any] = {}
    if "secret_key" in options:
        overrides["SECRET_KEY"] = options.pop("secret_key")
    if "fallback_keys" in options:
        overrides["SECRET_KEY_FALLBACKS"] = list(options.pop("fallback_keys"))
    overrides["SAUCE_SQL"] = {"STORE": store, "OPTIONS": options}
    with override_settings(**overrides):
        return WSGIHandler() if adapter == "django-wsgi" else ASGIHandler()


def from_env(kind: str = "wsgi") -> Any:
    """The app for real servers: ``SAUCE_SQL`` from ``SAUCE_WEB_URL`` and
    ``SAUCE_WEB_TABLE``, the key from ``SAUCE_WEB_SECRET``."""
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler

    configure()
    table = os.environ.get("SAUCE_WEB_TABLE", "sessions")
    settings.SAUCE_SQL = {
        "URL": os.environ["SAUCE_WEB_URL"],
        "STORE_OPTIONS": {"table_name": table, "clean_interval": None},
        "OPTIONS": json.loads(os.environ.get("SAUCE_WEB_OPTIONS", "{}")),
    }
    return WSGIHandler() if kind == "wsgi" else ASGIHandler()


def asgi_from_env() -> Any:
    """:func:`from_env` for uvicorn."""
    return from_env("asgi")
