"""The web layer's I/O-free parts: the crawler index, the cookie codec, client
addresses, and what importing the adapters pulls in."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sauce_sql import InvalidInput
from sauce_sql.web.bots import CrawlerIndex, agent_kind, crawler_index
from sauce_sql.web.clientip import ClientAddress
from sauce_sql.web.cookie import CookieCodec, cookie_value

KEY = "a key for the codec tests, 32 b."
HUMANS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.6778.104 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.2903.86",
]


def _list_patterns() -> list[re.Pattern[str]]:
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA

    return [re.compile(entry["pattern"]) for entry in CRAWLER_USER_AGENTS_DATA]


def _list_instances() -> list[str]:
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA

    return [ua for entry in CRAWLER_USER_AGENTS_DATA for ua in entry.get("instances", [])]


PATTERNS = _list_patterns()


def naive(user_agent: str) -> bool:
    """The list's own answer: any pattern found anywhere."""
    return any(pattern.search(user_agent) for pattern in PATTERNS)


def test_index_agrees_with_the_list_on_its_own_examples_and_on_browsers() -> None:
    """Every example user agent the list ships is a bot by the index exactly when the
    list says so, and common browsers are not bots."""
    index = crawler_index()
    samples = [*_list_instances(), *HUMANS]
    assert len(samples) > 1000
    assert [index.search(ua) for ua in samples] == [naive(ua) for ua in samples]
    assert not any(index.search(ua) for ua in HUMANS)


pieces = st.sampled_from(
    [p.pattern.replace("\\", "")[:12] for p in PATTERNS] + ["Mozilla/5.0 ", "(", "; ", "/"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(pieces | st.text(max_size=8), max_size=6).map("".join))
def test_index_agrees_with_the_list_on_made_up_agents(user_agent: str) -> None:
    """On strings made of pieces of the patterns and noise, the index answers as the list."""
    assert crawler_index().search(user_agent) == naive(user_agent)


@pytest.mark.parametrize(
    "pattern",
    [
        r"^curl",
        r"AdsBot-Google([^-]|$)",
        r"[wW]get",
        r"(sistrix|SISTRIX) [cC]rawler",
        r"a+b?c*d",
        r"PR-CY\.RU",  # no piece of letters and digits only: looked for apart
        r"Y!J",
    ],
)
def test_index_of_regex_constructs_matches_like_the_regex(pattern: str) -> None:
    """Anchors, classes, groups, alternations and quantifiers are filed so that the
    index finds exactly what the regex finds."""
    index = CrawlerIndex([pattern])
    for text in ["curl/8", "x curl", "AdsBot-Google", "AdsBot-Google-Mobile", "Wget", "wget",
                 "SISTRIX Crawler", "sistrix crawler", "ad", "abd", "aacccd", "xyz",
                 "x PR-CY.RU", "PR-CY-RU", "pr-cy.ru", "Y!J-ASR/0.1", "y!j"]:  # fmt: skip
        assert index.search(text) == bool(re.search(pattern, text)), text


@pytest.mark.parametrize(
    ("user_agent", "kind"),
    [
        ("kube-probe/1.29", "probe"),
        ("ELB-HealthChecker/2.0", "probe"),
        ("GoogleHC/1.0", "probe"),
        ("Consul Health Check", "probe"),
        ("Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/131.0.0.0 Safari/537.36", "headless"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
        ("Mozilla/5.0 (compatible; GPTBot/1.2; +https://openai.com/gptbot)", "bot"),
        ("curl/8.5.0", "bot"),
        ("", "bot"),
        *((ua, None) for ua in HUMANS),
    ],
)
def test_agent_kind(user_agent: str, kind: str | None) -> None:
    """Probes, headless browsers and bots are told apart; browsers are visitors."""
    assert agent_kind(user_agent) == kind


def test_codec_round_trip_and_refusals() -> None:
    """A signed cookie verifies; edited, non-ASCII, future, expired or foreign ones do not."""
    codec = CookieCodec(KEY)
    now = time.time()
    value = codec.sign("f" * 32, int(now))
    verified = codec.verify(value, now=now, max_age=3600)
    assert verified is not None
    assert verified.session_id == "f" * 32
    assert not verified.stale_key
    assert codec.verify(value, now=now + 3601, max_age=3600) is None
    future = codec.sign("f" * 32, int(now) + 2 * 86_400)
    assert codec.verify(future, now=now, max_age=3600) is None
    assert codec.verify(codec.sign("not-an-id", int(now)), now=now, max_age=3600) is None
    for bad in (value.replace("f", "e", 1), "é" + value[1:], value + "x", "", "a.b"):
        assert codec.verify(bad, now=now, max_age=3600) is None


def test_codec_tries_every_key_and_marks_fallbacks_stale() -> None:
    """Each fallback key verifies and marks the cookie due for re-signing; the newest
    key signs."""
    old, older = "old key of sixteen+ bytes", "older key, sixteen+ bytes"
    now = time.time()
    codec = CookieCodec(KEY, [old, older])
    for key in (old, older):
        verified = codec.verify(CookieCodec(key).sign("a" * 32, int(now)), now=now, max_age=60)
        assert verified is not None
        assert verified.stale_key
    assert CookieCodec(KEY).verify(codec.sign("a" * 32, int(now)), now=now, max_age=60)
    with pytest.raises(TypeError):
        CookieCodec(KEY, "one key, not a list of them")
    with pytest.raises(InvalidInput):
        CookieCodec("short")


def test_cookie_header_parsing_finds_every_value_of_the_name() -> None:
    """Every cookie of the name is found, quoted or not; other cookies are ignored."""
    header = 'other=1; sauce=first; sauce_x=2;sauce="second"; =; junk'
    assert cookie_value(header, "sauce") == ["first", "second"]


@pytest.mark.parametrize(
    ("mode", "peer", "stored"),
    [
        ("masked", "203.0.113.77", "203.0.113.0"),
        ("masked", "2001:db8:abcd:12::1", "2001:db8:abcd::"),
        ("masked", "::ffff:198.51.100.9", "198.51.100.0"),
        ("full", "2001:db8::1", "2001:db8::1"),
        ("none", "203.0.113.77", None),
        ("full", "not an address", None),
    ],
)
def test_client_ip_modes(mode: str, peer: str, stored: str | None) -> None:
    """Addresses are kept whole, masked to /24 or /48, or not at all."""
    assert ClientAddress(mode).client_ip(peer, None) == stored


def test_forwarded_for_walks_from_the_right() -> None:
    """Past trusted proxies the rightmost other address is the client; garbage there
    means no client address; a chain of proxies only gives its leftmost."""
    address = ClientAddress("full", ["10.0.0.0/8", "192.0.2.1"])
    assert address.client_ip("10.1.1.1", "6.6.6.6, 198.51.100.7, 10.0.0.3") == "198.51.100.7"
    assert address.client_ip("10.1.1.1", "6.6.6.6, nonsense, 10.0.0.3") is None
    assert address.client_ip("10.1.1.1", "10.0.0.9, 192.0.2.1") == "10.0.0.9"
    assert address.client_ip("198.51.100.1", "6.6.6.6") == "198.51.100.1"
    assert address.client_ip("10.1.1.1", "[2001:db8::5]:443") == "2001:db8::5"
    with pytest.raises(InvalidInput):
        ClientAddress("partial")
    with pytest.raises(InvalidInput):
        ClientAddress("full", ["not a network"])


def test_imports_stay_light() -> None:
    """``import sauce_sql`` loads no web framework or web dependency, and the adapters
    load no framework either."""
    code = (
        "import sys, sauce_sql; a = set(sys.modules);"
        "import sauce_sql.asgi, sauce_sql.wsgi; b = set(sys.modules);"
        "heavy = ('starlette', 'flask', 'django', 'werkzeug', 'httpx', 'itsdangerous');"
        "print(sorted(m for m in a if m.split('.')[0] in heavy + ('crawleruseragents',)));"
        "print(sorted(m for m in b if m.split('.')[0] in heavy[:5]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\n")
    assert out[:2] == ["[]", "[]"]


def test_new_visitor_whose_session_another_request_created_is_counted_once() -> None:
    """A new visitor's first count finds its session already made by a request of the
    same visitor that raced ahead: nothing fails, and each count lands once."""
    from sauce_sql import SequenceType, Store
    from sauce_sql.web import plans
    from sauce_sql.web.core import begin
    from sauce_sql.web.options import configure
    from sauce_sql.web.rules import (
        DEFAULT_PROBE_PATHS,
        DEFAULT_STATIC_EXTENSIONS,
        DEFAULT_STATIC_PATHS,
    )
    from sauce_sql.web.stats import WebStats

    config = configure(
        secret_key=KEY, fallback_keys=(), cookie_name="sauce", cookie_max_age=3600,
        cookie_domain=None, secure=None, count_views=True, client_ip="masked",
        trusted_proxies=(), honor_gpc=False, skip_headless=True,
        probe_paths=DEFAULT_PROBE_PATHS, static_paths=DEFAULT_STATIC_PATHS,
        static_extensions=DEFAULT_STATIC_EXTENSIONS, retry_after=1.0, clock=None,
    )  # fmt: skip
    visit = begin(config, "GET", "/", {"user-agent": HUMANS[0]}, "203.0.113.5", "http")
    assert visit.session_id is not None
    with Store("sqlite://", clean_interval=None) as store:
        store.new_session(visit.session_id)  # the racing request's
        store.inc_sequence(visit.session_id, "view")
        guard = plans.Guard(WebStats(), 1.0)
        assert plans.run(guard, store, plans.count(visit, SequenceType.VIEW)) == 2
        session = store.lookup_session(visit.session_id)
        assert session is not None
        assert session.view_sequence == 2
