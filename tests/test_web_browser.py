"""End to end in a real headless Chromium (Debian's ``chromium``, through its DevTools
protocol) against the Flask app behind gunicorn and the Starlette app behind uvicorn."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _cdp import Browser, chromium_path
from _servers import Server, gunicorn, uvicorn
from _web import CHROME, REQUIRE_BROWSER, SECRET
from test_web_servers import settle

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A headless Chromium presenting a desktop Chrome's user agent."""
    binary = chromium_path()
    if binary is None:
        if REQUIRE_BROWSER:
            pytest.fail("SAUCE_SQL_REQUIRE_PG=1 (CI) but Chromium is not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    profile = tmp_path / "profile"
    profile.mkdir()
    opened = Browser(binary, profile, CHROME)
    yield opened
    opened.close()


@pytest.mark.parametrize("serve", [gunicorn, uvicorn], ids=["gunicorn-wsgi", "uvicorn-asgi"])
def test_browser_keeps_its_session_across_a_restart_with_an_emptied_database(
    browser: Browser, tmp_path: Path, serve: Callable[[dict[str, str], Path], Server]
) -> None:
    """Three page loads, the app restarted on an emptied database, two more: the
    browser keeps its session id, the session is revived and counted on, and the cookie
    is stored HttpOnly, SameSite=Lax, Path=/, for 395 days from its first issue."""
    database = tmp_path / "web.db"
    url = f"sqlite:///{database}"
    env = {"SAUCE_WEB_URL": url, "SAUCE_WEB_SECRET": SECRET}
    server = serve(env, tmp_path / "server.log").start()
    try:
        texts = [browser.load(f"{server.url}/") for _ in range(3)]
        sids = {re.search(r"sid=(\w+)", text).group(1) for text in texts}  # type: ignore[union-attr]
        assert len(sids) == 1
        (sid,) = sids
        assert settle(url, {sid: 3}) == {sid: 3}
        issued_at = time.time()
        (cookie,) = browser.cookies(server.url)
        assert cookie["name"] == "sauce"
        assert cookie["value"].startswith(f"{sid}.")
        assert cookie["httpOnly"] is True
        assert cookie["secure"] is False
        assert cookie["sameSite"] == "Lax"
        assert cookie["path"] == "/"
        assert cookie["session"] is False
        assert abs(cookie["expires"] - (issued_at + 395 * 86_400)) < 120
        assert cookie["size"] <= 200

        server.stop()
        for leftover in tmp_path.glob("web.db*"):
            leftover.unlink()
        server.start()
        later = [browser.load(f"{server.url}/") for _ in range(2)]
        assert all(f"sid={sid}" in text for text in later)
        assert settle(url, {sid: 2}) == {sid: 2}  # revived under its id, counting again
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            agent = connection.execute(sa.text("SELECT user_agent FROM sessions")).scalar_one()
        engine.dispose()
        assert agent == CHROME
        (after,) = browser.cookies(server.url)
        assert after["value"] == cookie["value"]  # not re-issued: its lifetime is absolute
    finally:
        server.stop()
