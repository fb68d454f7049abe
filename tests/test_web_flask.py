"""The Flask extension: configured from the app, the tracker reachable in views."""

from __future__ import annotations

import time
from pathlib import Path

import flask
import httpx
import pytest
from _web import FIREFOX, OLD_SECRET, SECRET

from sauce_sql import Store
from sauce_sql.flask import Sauce, tracker
from sauce_sql.web.cookie import CookieCodec


def make_app(store: Store, **config: object) -> flask.Flask:
    """A two-route app using the extension through init_app."""
    app = flask.Flask("sauce_flask_tests")
    app.config.update(config)
    sauce = Sauce(store=store)
    sauce.init_app(app)

    @app.get("/")
    def page() -> str:
        return f"<p>{tracker().session_id}</p>"

    @app.post("/buy")
    def buy() -> dict[str, int]:
        return {"event": tracker().track_event()}

    return app


def test_extension_counts_with_the_apps_keys(tmp_path: Path) -> None:
    """The extension signs with SECRET_KEY, verifies SECRET_KEY_FALLBACKS, and counts
    views and events on the store."""
    with Store(f"sqlite:///{tmp_path / 'flask.db'}", clean_interval=None) as store:
        app = make_app(store, SECRET_KEY=SECRET, SECRET_KEY_FALLBACKS=[OLD_SECRET])
        old = CookieCodec(OLD_SECRET).sign("b" * 32, int(time.time()))
        transport = httpx.WSGITransport(app=app)
        with httpx.Client(transport=transport, base_url="http://t") as client:
            client.headers["user-agent"] = FIREFOX
            client.cookies.set("sauce", old)
            assert client.get("/").text == f"<p>{'b' * 32}</p>"
            assert client.post("/buy").json() == {"event": 1}
        session = store.lookup_session("b" * 32)
        assert session is not None
        assert (session.view_sequence, session.event_sequence) == (1, 1)
        assert app.extensions["sauce_sql"].get_state().views == 1


def test_extension_needs_a_secret_key(tmp_path: Path) -> None:
    """Without SECRET_KEY or secret_key= the extension refuses to start."""
    with Store("sqlite://", clean_interval=None) as store, pytest.raises(RuntimeError):
        make_app(store)
