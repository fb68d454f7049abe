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
    OLD_SECRET,
    SECRET,
    Factory,
    Site,
    async_store_class,
    shown,
)
from conftest import FakeClock

from sauce_sql import InvalidInput
from sauce_sql.web.cookie import CookieCodec

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
    """Every Set-Cookie header of a response."""
    headers: list[str] = response.headers.get_list("set-cookie")
    return headers


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


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "",
        "a.b.c",
        "x" * 4096,
        "0123456789abcdef0123456789abcdef.zzzzzzzzzzzzzz.sig",
        "..",
        '"quoted"',
    ],
)
def test_malformed_and_oversized_cookies_are_a_new_visitor(site: Site, value: str) -> None:
    """A malformed or oversized cookie is treated as none: a new session, no error."""
    visitor = site.visitor()
    response = visitor.get("/", headers={"cookie": f"sauce={value}"})
    assert response.status_code == 200
    sid = shown(response)[0]
    assert sid is not None
    assert site.row(sid)["view_sequence"] == 1
    assert cookie_header(response) != []


def test_tampered_cookie_is_a_new_visitor(site: Site) -> None:
    """A cookie whose id or signature was edited is refused: the visitor gets a new id
    and the other session's counter is untouched."""
    visitor = site.visitor()
    sid = shown(visitor.get("/"))[0]
    assert sid is not None
    value = visitor.cookies["sauce"]
    other_id = ("0" if sid[0] != "0" else "1") + sid[1:]
    edited = value[:-2] + ("AA" if value[-2:] != "AA" else "BB")
    for forged in (value.replace(sid, other_id), edited):
        response = site.visitor().get("/", headers={"cookie": f"sauce={forged}"})
        new_sid = shown(response)[0]
        assert new_sid not in (sid, other_id)
    assert site.row(sid)["view_sequence"] == 1


def test_cookie_of_another_key_is_a_new_visitor(make_site: Factory) -> None:
    """A cookie signed with a key the site does not hold is treated as none."""
    site = make_site()
    stranger = CookieCodec("somebody else's key, 32 bytes!!").sign("a" * 32, 1_767_268_800)
    response = site.visitor().get("/", headers={"cookie": f"sauce={stranger}"})
    assert shown(response)[0] != "a" * 32


@pytest.mark.parametrize(("old", "new"), [(OLD_SECRET, SECRET), (SECRET, OLD_SECRET)])
def test_key_rotation_accepts_fallback_cookies_and_reissues_them(
    make_site: Factory, old: str, new: str
) -> None:
    """After rotating (either way) a cookie of the fallback key keeps its session and
    is re-issued signed with the new key only, keeping its issue time."""
    first = make_site(secret_key=old)
    visitor = first.visitor()
    sid = shown(visitor.get("/"))[0]
    value = visitor.cookies["sauce"]
    first.close()

    rotated = make_site(secret_key=new, fallback_keys=[old])
    returning = rotated.visitor()
    response = returning.get("/", headers={"cookie": f"sauce={value}"})
    assert shown(response)[0] == sid
    assert rotated.row(sid or "")["view_sequence"] == 2
    (header,) = cookie_header(response)
    reissued = header.split(";")[0].removeprefix("sauce=")
    newest_only, old_only = CookieCodec(new), CookieCodec(old)
    verified = newest_only.verify(reissued, now=time.time(), max_age=400 * DAY)
    assert verified is not None
    assert verified.session_id == sid
    assert verified.issued == int(value.split(".")[1], 36)
    assert old_only.verify(reissued, now=time.time(), max_age=400 * DAY) is None
    # Once re-issued, the cookie is current: no further Set-Cookie.
    again = rotated.visitor().get("/", headers={"cookie": f"sauce={reissued}"})
    assert cookie_header(again) == []
    assert shown(again)[0] == sid


def test_new_cookies_are_signed_with_the_newest_key(make_site: Factory) -> None:
    """With fallback keys configured, new cookies are signed with secret_key, never a
    fallback (the order Flask 3.1.0 got wrong)."""
    site = make_site(secret_key=SECRET, fallback_keys=[OLD_SECRET])
    visitor = site.visitor()
    visitor.get("/")
    value = visitor.cookies["sauce"]
    assert CookieCodec(SECRET).verify(value, now=time.time(), max_age=400 * DAY) is not None
    assert CookieCodec(OLD_SECRET).verify(value, now=time.time(), max_age=400 * DAY) is None


def test_cookie_lifetime_is_absolute(make_site: Factory, clock: FakeClock) -> None:
    """Visits do not extend the cookie: it is honoured until its max age from issue,
    then the visitor is a new one; a re-issued cookie keeps the remaining time only."""
    site = make_site(clock=clock, cookie_max_age=30 * DAY, store_options={"clock": clock})
    visitor = site.visitor()
    sid = shown(visitor.get("/"))[0]
    clock.advance(29 * DAY)
    response = visitor.get("/")
    assert shown(response)[0] == sid
    assert cookie_header(response) == []
    clock.advance(DAY + 1)
    value = visitor.cookies["sauce"]  # a client keeping it past Max-Age
    late = site.visitor().get("/", headers={"cookie": f"sauce={value}"})
    assert shown(late)[0] != sid
    assert cookie_header(late) != []


def test_reissued_cookie_keeps_only_the_remaining_lifetime(
    make_site: Factory, clock: FakeClock
) -> None:
    """Key rotation re-issues a cookie with Max-Age = what is left of its life."""
    first = make_site(secret_key=OLD_SECRET, clock=clock, store_options={"clock": clock})
    visitor = first.visitor()
    visitor.get("/")
    value = visitor.cookies["sauce"]
    clock.advance(100 * DAY)
    rotated = make_site(fallback_keys=[OLD_SECRET], clock=clock, store_options={"clock": clock})
    (header,) = cookie_header(rotated.visitor().get("/", headers={"cookie": f"sauce={value}"}))
    assert f"Max-Age={295 * DAY}" in header


def test_cookie_max_age_is_capped_at_400_days(make_site: Factory) -> None:
    """A cookie lifetime over 400 days (or not positive) is refused up front."""
    for age in (400 * DAY + 1, 0, -1, float("nan")):
        with pytest.raises(InvalidInput):
            make_site(cookie_max_age=age)


def test_short_secret_key_is_refused(make_site: Factory) -> None:
    """A secret key shorter than 16 bytes is refused up front."""
    with pytest.raises(InvalidInput):
        make_site(secret_key="short")
    with pytest.raises(InvalidInput):
        make_site(fallback_keys=["short"])


def test_lost_session_is_revived_with_the_current_agent_and_address(site: Site) -> None:
    """When the store no longer has the session, the cookie's id is revived, with the
    user agent and address of the current request and no user from the cookie."""
    visitor = site.visitor()
    sid = shown(visitor.get("/login", params={"user": "user-42"}))[0]
    assert sid is not None
    site.empty_table()
    response = visitor.get("/", headers={"user-agent": CHROME})
    assert shown(response)[0] == sid
    assert cookie_header(response) == []
    row = site.row(sid)
    assert (row["view_sequence"], row["user_agent"], row["user_id"]) == (1, CHROME, None)
    assert row["client_ip"] == "127.0.0.0"


def test_expired_session_is_revived_with_its_counts(make_site: Factory, clock: FakeClock) -> None:
    """A visitor back after its session expired continues its view sequence."""
    site = make_site(clock=clock, store_options={"clock": clock, "session_max_age": 60})
    visitor = site.visitor()
    sid = shown(visitor.get("/"))[0]
    visitor.get("/")
    clock.advance(3600)
    visitor.get("/")
    assert site.row(sid or "")["view_sequence"] == 3


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
