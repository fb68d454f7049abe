"""A Flask extension over :class:`sauce_sql.wsgi.SauceMiddleware`.

>>> from flask import Flask
>>> from sauce_sql import Store
>>> from sauce_sql.flask import Sauce, tracker
>>> app = Flask(__name__)
>>> app.config["SECRET_KEY"] = "change me, 16 bytes or more"
>>> sauce = Sauce(app, store=Store("sqlite:///sessions.db"))

In a view, ``tracker()`` is the visitor (``tracker().session_id``,
``tracker().track_event()``, ``tracker().identify(user_id)``). The cookie is signed with
the app's ``SECRET_KEY`` (under a salt of its own) and ``SECRET_KEY_FALLBACKS`` verify
it, unless ``secret_key`` / ``fallback_keys`` are given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sauce_sql.store import Store
from sauce_sql.wsgi import SauceMiddleware, Tracker

if TYPE_CHECKING:
    import flask

__all__ = ["Sauce", "tracker"]


class Sauce:
    """Keeps each visitor's session and counts its page views on ``store``; the options
    are :class:`sauce_sql.wsgi.SauceMiddleware`'s."""

    def __init__(self, app: flask.Flask | None = None, *, store: Store, **options: Any) -> None:
        self.store = store
        self.options = options
        self.middleware: SauceMiddleware | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> None:
        """Wrap ``app.wsgi_app``; the middleware is also ``app.extensions["sauce_sql"]``."""
        options = dict(self.options)
        options.setdefault("secret_key", app.config.get("SECRET_KEY"))
        options.setdefault("fallback_keys", tuple(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        if not options["secret_key"]:
            raise RuntimeError("sauce_sql.flask.Sauce needs the app's SECRET_KEY (or secret_key=)")
        self.middleware = SauceMiddleware(app.wsgi_app, store=self.store, **options)
        app.wsgi_app = self.middleware  # type: ignore[method-assign]
        app.extensions["sauce_sql"] = self.middleware


def tracker() -> Tracker:
    """The current request's visitor (in a request context)."""
    from flask import request

    found: Tracker = request.environ["sauce"]
    return found
