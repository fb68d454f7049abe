"""The Django middleware: its settings, its sync and async trackers in both of Django's
modes, and the README's Django app and the test project behind real servers (gunicorn
for WSGI, uvicorn for ASGI restarted mid-visit). The middleware's rules run in
``test_web.py`` and ``test_web_load.py`` on the ``django-wsgi`` and ``django-asgi``
adapters."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _servers import Server, free_port, uvicorn
from _web import FIREFOX, SECRET, Site, shown
from test_web_readme import example
from test_web_servers import BOTS, browse, send_bots, settle

from sauce_sql import AsyncStore, InvalidInput, Store

django = pytest.importorskip("django")

DJANGO = ["django-wsgi", "django-asgi"]


@pytest.fixture(params=DJANGO)
def django_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """The test project on each of Django's handlers, on a SQLite file."""
    made = Site(request.param, f"sqlite:///{tmp_path / 'web.db'}", "sessions", secret_key=SECRET)
    yield made
    made.close()


def test_sync_and_async_trackers_count_in_either_mode(django_site: Site) -> None:
    """``track_event()`` from a sync view and ``atrack_event()`` from an async one count
    on one session, under WSGI (Store) and under ASGI (AsyncStore) alike."""
    visitor = django_site.visitor()
    sid = shown(visitor.get("/"))[0]
    assert visitor.get("/event").json() == {"event": 1}
    assert visitor.get("/aevent").json() == {"event": 2}
    assert shown(visitor.get("/apage"))[0] == sid
    row = django_site.row(sid or "")
    assert (row["view_sequence"], row["event_sequence"]) == (2, 2)
    assert django_site.state().views == 2


def test_store_kind_follows_django_mode(django_site: Site) -> None:
    """Under WSGI the middleware keeps sessions on a Store, under ASGI on an AsyncStore."""
    expected = Store if django_site.adapter == "django-wsgi" else AsyncStore
    assert isinstance(django_site.middleware.store, expected)


def handler_with(sauce_sql: Any, adapter: str = "django-wsgi", **settings: Any) -> Any:
    """Build Django's handler with ``SAUCE_SQL = sauce_sql`` (and other settings)."""
    import _django_site
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler
    from django.test.utils import override_settings

    _django_site.configure()
    with override_settings(SAUCE_SQL=sauce_sql, **settings):
        return WSGIHandler() if adapter == "django-wsgi" else ASGIHandler()


@pytest.mark.parametrize(
    ("sauce_sql", "message"),
    [
        (None, "needs settings.SAUCE_SQL"),
        ({}, 'needs "URL"'),
        ({"URL": "sqlite://", "TABLE": "x"}, "unknown keys ['TABLE']"),
        ({"URL": "sqlite://", "OPTIONS": {"cookie_age": 1}}, "unknown options ['cookie_age']"),
    ],
)
def test_settings_of_the_wrong_shape_are_improperly_configured(
    sauce_sql: Any, message: str
) -> None:
    """A ``SAUCE_SQL`` of the wrong shape stops Django's start with ImproperlyConfigured
    saying what is wrong."""
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=message.replace("[", r"\[")):
        handler_with(sauce_sql)


@pytest.mark.parametrize(
    ("sauce_sql", "message"),
    [
        ({"URL": "oracle://x"}, "oracle"),
        ({"URL": "sqlite://", "OPTIONS": {"cookie_max_age": 10**9}}, "400 days"),
        ({"URL": "sqlite://", "OPTIONS": {"client_ip": "all"}}, "client_ip"),
    ],
)
def test_bad_values_in_settings_are_invalid_input(sauce_sql: Any, message: str) -> None:
    """A bad value in ``SAUCE_SQL`` is refused as the store or the middleware refuse it."""
    with pytest.raises(InvalidInput, match=message):
        handler_with(sauce_sql)


def test_unknown_store_option_is_a_type_error() -> None:
    """``STORE_OPTIONS`` are the store's keyword options: an unknown one is a TypeError."""
    with pytest.raises(TypeError, match="nope"):
        handler_with({"URL": "sqlite://", "STORE_OPTIONS": {"nope": 1}})


def test_a_store_of_the_other_mode_is_refused() -> None:
    """A ``STORE`` that does not match how Django runs the middleware is refused."""
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=r"must be a sauce_sql\.Store"):
        handler_with({"STORE": AsyncStore("sqlite://")})
    with pytest.raises(ImproperlyConfigured, match=r"must be a sauce_sql\.AsyncStore"):
        handler_with({"STORE": Store("sqlite://")}, adapter="django-asgi")


def test_short_secret_key_is_refused() -> None:
    """The cookie needs a real key: Django's SECRET_KEY shorter than 16 bytes is refused."""
    with pytest.raises(InvalidInput, match="16 bytes"):
        handler_with({"URL": "sqlite://"}, SECRET_KEY="short")


def views_and_events(path: Path) -> list[tuple[int, int]]:
    """(views, events) of every session in a SQLite file, sorted."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT view_sequence, event_sequence FROM sessions")
        return sorted(rows.fetchall())


@pytest.mark.slow
def test_readme_django_example_under_gunicorn(tmp_path: Path) -> None:
    """The README's Django app, as printed, behind gunicorn with 2 workers: 6 visitors
    of 4 views and one event each are counted exactly; bots set no cookie, add no row."""
    (tmp_path / "app.py").write_text(example("django"))
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "app"]
    server = Server(argv, {"SAUCE_SECRET": SECRET}, port, tmp_path / "gunicorn.log", tmp_path)
    server.start()
    clients = [httpx.Client(headers={"user-agent": FIREFOX}) for _ in range(6)]
    try:
        for client in clients:
            for _ in range(4):
                assert "Hello, visitor " in client.get(f"{server.url}/").text
            assert client.post(f"{server.url}/signup").json() == {"event": 1}
        with httpx.Client() as bot:
            for path, headers in BOTS * 10:
                response = bot.get(f"{server.url}{path}", headers=headers)
                assert response.headers.get_list("set-cookie") == []
        deadline = time.monotonic() + 20
        while views_and_events(tmp_path / "sessions.db") != [(4, 1)] * 6:
            assert time.monotonic() < deadline, views_and_events(tmp_path / "sessions.db")
            time.sleep(0.1)
    finally:
        for client in clients:
            client.close()
        server.stop()


@pytest.mark.slow
def test_django_asgi_under_uvicorn_restarted_mid_visit(tmp_path: Path) -> None:
    """Django's ASGI handler under uvicorn, restarted mid-visit: every visitor keeps its
    session and its count; bots and probes add no row."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    env = {"SAUCE_WEB_URL": url, "SAUCE_WEB_SECRET": SECRET}
    server = uvicorn(env, tmp_path / "uvicorn.log", "_django_site:asgi_from_env", "off")
    server.start()
    clients = [httpx.Client(headers={"user-agent": FIREFOX}) for _ in range(10)]
    try:
        sids: dict[int, str] = {}
        browse(server, clients, 3, sids)
        assert settle(url, {sid: 3 for sid in sids.values()}) == {sid: 3 for sid in sids.values()}
        server.stop()
        server.start()
        browse(server, clients, 2, sids)
        assert send_bots(server, len(BOTS) * 10) == 0
        expected = {sid: 5 for sid in sids.values()}
        assert settle(url, expected) == expected
    finally:
        for client in clients:
            client.close()
        server.stop()
