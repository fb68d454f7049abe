"""What only the ASGI middleware does: WebSocket scopes and the lifespan, driven through
the ASGI protocol itself on an AsyncStore."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _web import FIREFOX, SECRET, Site, async_store_class

pytestmark = pytest.mark.skipif(
    async_store_class() is None, reason="sauce_sql.AsyncStore has not landed in this checkout yet"
)


@pytest.fixture
def asgi_site(tmp_path: Path) -> Iterator[Site]:
    """A Starlette site on an AsyncStore and a SQLite file."""
    made = Site("asgi", f"sqlite:///{tmp_path / 'web.db'}", "sessions", secret_key=SECRET)
    yield made
    made.close()


async def talk(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[Any]:
    """Run one ASGI connection: feed ``incoming`` then wait; return what the app sent."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in incoming:
        queue.put_nowait(message)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return await queue.get()

    async def send(message: Any) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), 30)
    return sent


def websocket_scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    """A WebSocket connection to ``/ws``."""
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/ws",
        "query_string": b"",
        "client": ("198.51.100.4", 40000),
        "headers": [(b"user-agent", FIREFOX.encode()), *headers],
        "subprotocols": [],
    }


def test_websocket_gets_the_tracker_and_its_cookie(asgi_site: Site) -> None:
    """A WebSocket connection has the tracker: an event creates the session and the
    accept carries the new visitor's cookie; a bot's connection tracks nothing."""
    assert asgi_site.loop is not None
    sent = asgi_site.loop.run(
        talk(asgi_site.app, websocket_scope(), [{"type": "websocket.connect"}])
    )
    accept = next(m for m in sent if m["type"] == "websocket.accept")
    cookies = [v.decode() for k, v in accept.get("headers", []) if k == b"set-cookie"]
    payload = json.loads(next(m for m in sent if m["type"] == "websocket.send")["text"])
    assert payload["event"] == 1
    assert cookies[0].startswith(f"sauce={payload['sid']}.")
    row = asgi_site.row(payload["sid"])
    assert (row["view_sequence"], row["event_sequence"]) == (0, 1)

    bot = websocket_scope()
    bot["headers"] = [(b"user-agent", b"python-requests/2.32")]
    sent = asgi_site.loop.run(talk(asgi_site.app, bot, [{"type": "websocket.connect"}]))
    payload = json.loads(next(m for m in sent if m["type"] == "websocket.send")["text"])
    assert payload == {"sid": None, "event": 0}
    assert len(asgi_site.rows()) == 1


def test_lifespan_starts_and_closes_the_store(tmp_path: Path) -> None:
    """On lifespan startup the store is started with the app; at shutdown it is closed."""
    site = Site(
        "asgi", f"sqlite:///{tmp_path / 'web.db'}", "sessions", secret_key=SECRET, start_store=False
    )
    assert site.loop is not None
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    sent = site.loop.run(talk(site.app, scope, incoming))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert (tmp_path / "web.db").exists()  # started: migrated
    site.loop.close()


def test_app_boots_with_its_database_down(tmp_path: Path) -> None:
    """A store that cannot start does not fail the app's startup; pages are served."""
    missing = tmp_path / "missing"
    site = Site(
        "asgi", f"sqlite:///{missing / 'web.db'}", "sessions", secret_key=SECRET, start_store=False
    )
    assert site.loop is not None
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    sent = site.loop.run(talk(site.app, scope, incoming))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert site.state().store_failures == 1
    response = site.visitor().get("/")
    assert response.status_code == 200
    assert "sid=" in response.text
    assert not site.state().store_available
    site.loop.close()
