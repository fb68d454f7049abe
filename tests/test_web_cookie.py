"""The visitor cookie through the middleware, both adapters: refused cookies, key
rotation both ways, the absolute lifetime, and revival of lost sessions."""

from __future__ import annotations

import time

import pytest
from _web import CHROME, OLD_SECRET, SECRET, Factory, Site, shown
from conftest import FakeClock
from test_web import DAY, adapter, cookie_header, make_site, site

from sauce_sql import InvalidInput
from sauce_sql.web.cookie import CookieCodec

__all__ = ["adapter", "make_site", "site"]  # fixtures this module uses


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
