"""The web middleware's rules, on both adapters (WSGI over Store, ASGI over AsyncStore),
in process through httpx's WSGI and ASGI transports, on a SQLite file."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _web import (
    ADAPTERS,
    CHROME,
    FIREFOX,
    SECRET,
    Factory,
    Site,
    async_store_class,
    shown,
)

DAY = 86_400


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    """Each adapter in turn; ASGI skips while this checkout has no AsyncStore."""
    if request.param == "asgi" and async_store_class() is None:
        pytest.skip("sauce_sql.AsyncStore has not landed in this checkout yet")
    name: str = request.param
    return name


@pytest.fixture
def make_site(adapter: str, tmp_path: Path) -> Iterator[Factory]:
    """Make sites on a SQLite file with the tests' secret key, closed after the test."""
    sites: list[Site] = []

    def make(**options: Any) -> Site:
        options.setdefault("secret_key", SECRET)
        made = Site(adapter, f"sqlite:///{tmp_path / 'web.db'}", "sessions", **options)
        sites.append(made)
        return made

    yield make
    for made in sites:
        made.close()


@pytest.fixture
def site(make_site: Factory) -> Site:
    """A site with the default options."""
    return make_site()


def cookie_header(response: Any) -> list[str]:
    """Every Set-Cookie header of a response (Django's WSGI handler starts each with a
    space, which clients ignore)."""
    headers: list[str] = response.headers.get_list("set-cookie")
    return [header.strip() for header in headers]


def test_first_page_view_creates_the_session_and_sets_a_small_cookie(site: Site) -> None:
    """A new visitor's first page view creates its row (one view) and sets an HttpOnly,
    SameSite=Lax, Path=/ cookie of at most 200 bytes that holds no user."""
    visitor = site.visitor()
    response = visitor.get("/")
    sid, skipped = shown(response)
    assert response.status_code == 200
    assert skipped is None
    assert sid is not None
    (header,) = cookie_header(response)
    assert len(header.encode()) <= 200
    attributes = [part.strip() for part in header.split(";")]
    assert attributes[0].startswith(f"sauce={sid}.")
    assert {"HttpOnly", "SameSite=Lax", "Path=/"} <= set(attributes)
    assert f"Max-Age={395 * DAY}" in attributes
    assert "Secure" not in attributes
    row = site.row(sid)
    assert (row["view_sequence"], row["event_sequence"], row["user_id"]) == (1, 0, None)
    assert row["user_agent"] == FIREFOX


def test_cookie_is_secure_on_https(site: Site) -> None:
    """Over https the cookie is also Secure."""
    response = site.visitor("https://testserver").get("/")
    assert "Secure" in [part.strip() for part in cookie_header(response)[0].split(";")]


def test_returning_visitor_counts_every_view_and_gets_no_new_cookie(site: Site) -> None:
    """Later page views keep the id, count 2, 3, ... and send no Set-Cookie again."""
    visitor = site.visitor()
    sid = shown(visitor.get("/"))[0]
    assert sid is not None
    for n in range(2, 6):
        response = visitor.get("/")
        assert shown(response)[0] == sid
        assert cookie_header(response) == []
        assert site.row(sid)["view_sequence"] == n
    assert len(site.rows()) == 1
    assert site.state().views == 5


@pytest.mark.parametrize(
    ("path", "method", "headers", "reason"),
    [
        ("/", "GET", {"user-agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}, "bot"),
        ("/", "GET", {"user-agent": "curl/8.5.0"}, "bot"),
        ("/", "GET", {"user-agent": "python-requests/2.32.3"}, "bot"),
        ("/", "GET", {"user-agent": ""}, "bot"),
        ("/", "GET", {"user-agent": "kube-probe/1.29"}, "probe"),
        ("/", "GET", {"user-agent": "ELB-HealthChecker/2.0"}, "probe"),
        ("/health", "GET", {}, "probe"),
        ("/assets/app.css", "GET", {}, "static"),
        ("/", "HEAD", {}, "method"),
        ("/", "OPTIONS", {}, "method"),
        ("/", "GET", {"sec-purpose": "prefetch"}, "prefetch"),
        ("/", "GET", {"sec-purpose": "prefetch;prerender"}, "prefetch"),
        ("/", "GET", {"purpose": "prefetch"}, "prefetch"),
        ("/", "GET", {"user-agent": CHROME.replace("Chrome/", "HeadlessChrome/")}, "headless"),
    ],
)
def test_skipped_requests_create_no_row_and_set_no_cookie(
    site: Site, path: str, method: str, headers: dict[str, str], reason: str
) -> None:
    """Bots, probes, static files, HEAD/OPTIONS, prefetches and headless browsers are
    skipped with their reason: no session id, no row, no cookie, counted per reason."""
    response = site.visitor().request(method, path, headers=headers)
    assert response.status_code == 200
    assert cookie_header(response) == []
    if path == "/" and method in ("GET", "OPTIONS"):
        assert shown(response) == (None, reason)
    assert site.rows() == []
    assert site.state().skipped == {reason: 1}


@pytest.mark.parametrize(
    ("path", "method", "headers", "reason"),
    [
        ("/api", "GET", {}, "not_html"),
        ("/missing", "GET", {}, "status"),
        ("/go", "GET", {}, "status"),
        ("/", "POST", {}, "not_get"),
        ("/", "GET", {"sec-fetch-mode": "cors"}, "not_navigation"),
    ],
)
def test_requests_that_are_no_page_view_write_nothing(
    site: Site, path: str, method: str, headers: dict[str, str], reason: str
) -> None:
    """Non-HTML, non-2xx, non-GET and non-navigation responses count nothing and write
    nothing, though the app saw the visitor's id."""
    response = site.visitor().request(method, path, headers=headers)
    assert cookie_header(response) == []
    assert site.rows() == []
    assert site.state().skipped == {reason: 1}


def test_navigation_is_a_page_view(site: Site) -> None:
    """A request marked ``Sec-Fetch-Mode: navigate`` is counted."""
    response = site.visitor().get("/", headers={"sec-fetch-mode": "navigate"})
    sid = shown(response)[0]
    assert sid is not None
    assert site.row(sid)["view_sequence"] == 1


def test_session_id_is_known_before_the_row_exists(site: Site) -> None:
    """A new visitor's id is on the tracker before anything is stored, and the first
    tracked request stores it under that very id."""
    visitor = site.visitor()
    sid_seen = visitor.get("/api").json()["sid"]
    assert len(sid_seen) == 32
    assert site.rows() == []
    event = visitor.get("/event")
    assert event.json() == {"event": 1}
    (row,) = site.rows()
    assert row["session_id"] != sid_seen  # no cookie was set by /api: a new visitor
    assert (row["view_sequence"], row["event_sequence"]) == (0, 1)
    assert cookie_header(event) != []


def test_track_event_creates_the_session_and_counts(site: Site) -> None:
    """track_event() creates the session if need be and returns 1, 2, ...; the cookie
    is set by the response that created it."""
    visitor = site.visitor()
    assert [visitor.get("/event").json()["event"] for _ in range(3)] == [1, 2, 3]
    (row,) = site.rows()
    assert (row["view_sequence"], row["event_sequence"]) == (0, 3)
    assert site.state().events == 3


def test_count_views_off_counts_only_by_hand(make_site: Factory) -> None:
    """With count_views=False pages count nothing; track_visit() counts a view, once."""
    site = make_site(count_views=False)
    visitor = site.visitor()
    visitor.get("/")
    assert site.rows() == []
    assert visitor.get("/visit").json() == {"view": 1}
    assert visitor.get("/visit").json() == {"view": 2}
    (row,) = site.rows()
    assert row["view_sequence"] == 2


def test_identify_stores_the_user_and_the_cookie_never_holds_it(site: Site) -> None:
    """identify() sets the stored user; the cookie carries only the id and issue time."""
    visitor = site.visitor()
    sid = shown(visitor.get("/login", params={"user": "user-42"}))[0]
    assert sid is not None
    assert site.row(sid)["user_id"] == "user-42"
    value = visitor.cookies["sauce"]
    assert "user-42" not in value
    payload = value.rsplit(".", 1)[0]
    assert payload.split(".")[0] == sid
    assert len(payload.split(".")) == 2
    visitor.get("/login", params={"user": "user-43"})
    assert site.row(sid)["user_id"] == "user-43"


def test_clearing_the_user_of_a_new_visitor_writes_nothing(site: Site) -> None:
    """identify(None) for a visitor without a cookie (a logout page, say) creates no
    session and sets no cookie; for a known visitor it clears the stored user."""
    visitor = site.visitor()
    response = visitor.request("POST", "/login", params={"user": ""})
    assert cookie_header(response) == []
    assert site.rows() == []
    sid = shown(visitor.request("POST", "/login", params={"user": "user-7"}))[0]
    assert site.row(sid or "")["user_id"] == "user-7"
    visitor.request("POST", "/login", params={"user": ""})
    row = site.row(sid or "")
    assert (row["user_id"], row["view_sequence"]) == (None, 0)


@pytest.mark.parametrize(
    ("mode", "stored"), [("masked", "127.0.0.0"), ("full", "127.0.0.1"), ("none", None)]
)
def test_client_ip_is_kept_as_configured(make_site: Factory, mode: str, stored: str | None) -> None:
    """client_ip="masked" (the default) keeps the /24, "full" the address, "none" nothing."""
    site = make_site(client_ip=mode)
    sid = shown(site.visitor().get("/"))[0]
    assert site.row(sid or "")["client_ip"] == stored


def test_forwarded_for_is_read_only_from_trusted_proxies(make_site: Factory) -> None:
    """X-Forwarded-For is walked from the right past trusted proxies; from anyone else
    it is ignored, so a client cannot forge its address."""
    forwarded = {"x-forwarded-for": "203.0.113.9, 198.51.100.7, 10.0.0.2"}
    trusting = make_site(client_ip="full", trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    sid = shown(trusting.visitor().get("/", headers=forwarded))[0]
    assert trusting.row(sid or "")["client_ip"] == "198.51.100.7"
    trusting.close()
    trusting.empty_table()
    distrusting = make_site(client_ip="full", trusted_proxies=["10.0.0.0/8"])
    sid = shown(distrusting.visitor().get("/", headers=forwarded))[0]
    assert distrusting.row(sid or "")["client_ip"] == "127.0.0.1"


def test_global_privacy_control_is_honoured_when_asked(make_site: Factory) -> None:
    """With honor_gpc=True a request sending Sec-GPC: 1 is skipped; by default it is not."""
    honouring = make_site(honor_gpc=True)
    response = honouring.visitor().get("/", headers={"sec-gpc": "1"})
    assert shown(response) == (None, "gpc")
    assert honouring.rows() == []
    honouring.close()
    default = make_site()
    assert shown(default.visitor().get("/", headers={"sec-gpc": "1"}))[1] is None


def test_store_unavailable_at_start_up_serves_pages_and_recovers(
    adapter: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that cannot start (its directory missing) leaves pages served, logs the
    first failure once, counts the rest, and tracking resumes once it can start."""
    missing = tmp_path / "not-yet"
    site = Site(
        adapter,
        f"sqlite:///{missing / 'web.db'}",
        "sessions",
        secret_key=SECRET,
        start_store=False,
        retry_after=0.01,
    )
    try:
        visitor = site.visitor()
        with caplog.at_level(logging.WARNING, logger="sauce_sql.web"):
            for _ in range(3):
                response = visitor.get("/")
                assert response.status_code == 200
                assert shown(response)[0] is not None
        warnings = [r for r in caplog.records if r.name == "sauce_sql.web"]
        assert len(warnings) == 1
        assert "not tracked" in warnings[0].getMessage()
        state = site.state()
        assert state.store_failures >= 1
        assert not state.store_available
        sid = shown(response)[0]
        missing.mkdir()
        time.sleep(0.05)
        visitor.get("/")
        assert site.row(sid or "")["view_sequence"] == 1
        assert site.state().store_available
    finally:
        site.close()


def test_ten_thousand_skipped_requests_write_nothing(site: Site) -> None:
    """10,000 bot, probe, static and prefetch requests create no row and no cookie."""
    kinds: list[tuple[str, dict[str, str]]] = [
        ("/", {"user-agent": "Mozilla/5.0 (compatible; bingbot/2.0)"}),
        ("/", {"user-agent": "kube-probe/1.30"}),
        ("/health", {}),
        ("/assets/app.css", {}),
        ("/", {"sec-purpose": "prefetch"}),
    ]
    visitor = site.visitor()
    cookies = 0
    for n in range(10_000):
        path, headers = kinds[n % len(kinds)]
        response = visitor.get(path, headers=headers)
        cookies += len(cookie_header(response))
    assert cookies == 0
    assert site.rows() == []
    assert sum(site.state().skipped.values()) == 10_000
