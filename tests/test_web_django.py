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
from _web import FIREFOX, PAGE, SECRET, Site, shown
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


def test_both_modes_keep_sessions_on_a_store(django_site: Site) -> None:
    """Under WSGI and ASGI alike the middleware keeps sessions on a Store, run in
    Django's threads."""
    assert isinstance(django_site.middleware.store, Store)


def test_an_event_from_a_thread_the_view_starts_counts(django_site: Site) -> None:
    """``track_event()`` from a thread a view starts counts, under WSGI and ASGI."""
    visitor = django_site.visitor()
    sid = shown(visitor.get("/"))[0]
    assert visitor.get("/thread-event").json() == {"event": 1}
    assert django_site.row(sid or "")["event_sequence"] == 1


def test_a_response_setting_the_cookie_varies_on_cookie(django_site: Site) -> None:
    """When the middleware sets its cookie the response says ``Vary: Cookie``, as
    Django's own session middleware does, so that no cache hands it to another."""
    response = django_site.visitor().get("/")
    assert "sauce=" in response.headers["set-cookie"]
    assert "Cookie" in response.headers["vary"]


def test_the_apps_own_cookie_of_that_name_wins(django_site: Site) -> None:
    """A view that sets a cookie of the middleware's name keeps it (one Set-Cookie);
    the view is counted all the same."""
    response = django_site.visitor().get("/own-cookie")
    (header,) = response.headers.get_list("set-cookie")
    assert "the app" in header
    sid = shown(response)[0]
    assert django_site.row(sid or "")["view_sequence"] == 1


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
        ({"URL": "sqlite://", "OPTIONS": ["secure"]}, 'SAUCE_SQL["OPTIONS"] must be a dict'),
        ({"URL": "sqlite://", "OPTIONS": None}, 'SAUCE_SQL["OPTIONS"] must be a dict'),
        ({"URL": "sqlite://", "STORE_OPTIONS": 3}, 'SAUCE_SQL["STORE_OPTIONS"] must be a dict'),
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


@pytest.mark.parametrize("adapter", DJANGO)
def test_a_store_that_is_no_store_is_refused(adapter: str) -> None:
    """``STORE`` must be a Store (an AsyncStore is bound to one loop, and Django runs
    the middleware's calls in its threads); ``URL`` and ``STORE`` together are refused."""
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=r"must be a sauce_sql\.Store"):
        handler_with({"STORE": AsyncStore("sqlite://")}, adapter=adapter)
    with pytest.raises(ImproperlyConfigured, match="not both"):
        handler_with({"STORE": Store("sqlite://"), "URL": "oracle://x"}, adapter=adapter)


def test_fallback_keys_as_one_string_are_refused() -> None:
    """``SECRET_KEY_FALLBACKS`` as one string (not a list) is refused, not taken as
    its characters."""
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY_FALLBACKS must be a list"):
        handler_with({"URL": "sqlite://"}, SECRET_KEY_FALLBACKS=SECRET)


def test_every_handler_of_a_process_shares_one_store(tmp_path: Path) -> None:
    """Django builds a middleware per handler (each test client of a test suite has
    one): on one ``URL`` and ``STORE_OPTIONS`` they share one store, not a store and
    its connections each."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    conf = {"URL": url, "STORE_OPTIONS": {"clean_interval": None}}
    from sauce_sql.django import SauceMiddleware

    stores = set()
    for adapter in [*DJANGO] * 20:
        handler_with(conf, adapter=adapter)
        assert SauceMiddleware.latest is not None
        stores.add(id(SauceMiddleware.latest.store))
    assert len(stores) == 1
    other = {**conf, "STORE_OPTIONS": {"clean_interval": None, "table_name": "others"}}
    handler_with(other)
    assert SauceMiddleware.latest is not None
    assert id(SauceMiddleware.latest.store) not in stores
    SauceMiddleware.latest.store.close()


def test_django_test_client_and_async_client_count(tmp_path: Path) -> None:
    """In a project's own tests, Django's ``Client`` and ``AsyncClient`` see
    ``request.sauce`` and their views are counted, streaming ones included."""
    import asyncio

    import _django_site
    from django.test import AsyncClient, Client
    from django.test.utils import override_settings

    _django_site.configure()
    url = f"sqlite:///{tmp_path / 'client.db'}"
    conf = {"URL": url, "STORE_OPTIONS": {"clean_interval": None}}
    with override_settings(SAUCE_SQL=conf):
        client = Client(headers={"user-agent": FIREFOX})
        sid = shown_text(client.get("/").content.decode())
        assert client.get("/event").json() == {"event": 1}

        async def visits() -> list[str]:
            # Per request: AsyncClient(headers=...) sends them as "http-user-agent".
            aclient, headers = AsyncClient(), {"user-agent": FIREFOX}
            first = shown_text((await aclient.get("/", headers=headers)).content.decode())
            streamed = await aclient.get("/stream", headers=headers)
            # Counted once the body has been sent: the test client's reader closes it.
            assert b"".join(streamed.streaming_content).endswith(b"streamed</body></html>")
            await aclient.get("/apage", headers=headers)
            return [first]

        (asid,) = asyncio.run(visits())
    assert sid != asid
    rows = dict(
        sqlite3.connect(tmp_path / "client.db")
        .execute("SELECT session_id, view_sequence FROM sessions")
        .fetchall()
    )
    assert rows == {sid: 1, asid: 3}


def shown_text(html: str) -> str:
    """The session id a test page shows."""
    match = PAGE.search(html)
    assert match is not None, html
    return match.group(1)


def test_counts_are_dropped_while_many_wait_long_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While as many counts as the limit are running and none has finished for a
    while (a database that hangs), a response's count is dropped and counted in
    ``dropped``, with one warning, and no thread waits for it; counting goes on once
    they are done. As many running on a store that finishes counts drop nothing."""
    import logging
    import time as clock

    from sauce_sql import django as sauce_django

    site = Site("django-wsgi", f"sqlite:///{tmp_path / 'web.db'}", "sessions", secret_key=SECRET)
    try:
        visitor = site.visitor()
        sid = shown(visitor.get("/"))[0]
        middleware = site.middleware
        running = middleware._in_flight
        for n in range(sauce_django._MAX_IN_FLIGHT):
            running[n] = clock.monotonic()
        visitor.get("/")
        assert middleware.get_state().dropped == 0
        for n in range(sauce_django._MAX_IN_FLIGHT):
            running[n] = clock.monotonic() - 2 * sauce_django._STALLED_AFTER
        # ... and none has finished since: the store hangs.
        middleware._finished_at = clock.monotonic() - 2 * sauce_django._STALLED_AFTER
        with caplog.at_level(logging.WARNING, logger="sauce_sql.web"):
            visitor.get("/")
            visitor.get("/")
        assert middleware.get_state().dropped == 2
        assert [r for r in caplog.records if "dropped" in r.getMessage()] != []
        running.clear()
        visitor.get("/")
        assert site.row(sid or "")["view_sequence"] == 3
    finally:
        site.close()


def test_a_middleware_replacing_responses_outside_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ConditionalGetMiddleware listed before SauceMiddleware (its 304 would keep the
    cookie and lose the count) gets a warning naming the fix; listed after, none."""
    import logging

    conf = {"URL": f"sqlite:///{tmp_path / 'o.db'}", "STORE_OPTIONS": {"clean_interval": None}}
    ours, conditional = (
        "sauce_sql.django.SauceMiddleware",
        "django.middleware.http.ConditionalGetMiddleware",
    )
    with caplog.at_level(logging.WARNING, logger="sauce_sql.web"):
        handler_with(conf, MIDDLEWARE=[ours, conditional])
        assert caplog.records == []
        handler_with(conf, MIDDLEWARE=[conditional, ours])
    (record,) = caplog.records
    assert "before django.middleware.http.ConditionalGetMiddleware" in record.getMessage()


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
