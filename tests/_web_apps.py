"""Apps for the real servers (gunicorn, uvicorn), configured by environment variables:
``SAUCE_WEB_URL`` and ``SAUCE_WEB_TABLE`` (the store), ``SAUCE_WEB_SECRET``."""

from __future__ import annotations

import os
from typing import Any

from _web import flask_app, starlette_app

from sauce_sql import AsyncStore, Store


def _store_options() -> dict[str, Any]:
    return {"table_name": os.environ.get("SAUCE_WEB_TABLE", "sessions"), "clean_interval": None}


def flask_from_env() -> Any:
    """The Flask test app on a Store (one per gunicorn worker, started on first use)."""
    store = Store(os.environ["SAUCE_WEB_URL"], **_store_options())
    return flask_app(store=store, secret_key=os.environ["SAUCE_WEB_SECRET"])


def starlette_from_env() -> Any:
    """The Starlette test app on an AsyncStore, started and closed by the lifespan."""
    store = AsyncStore(os.environ["SAUCE_WEB_URL"], **_store_options())
    return starlette_app(store=store, secret_key=os.environ["SAUCE_WEB_SECRET"])
