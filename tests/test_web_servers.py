"""The middleware behind real servers: gunicorn with 4 workers (WSGI) and uvicorn
restarted mid-visit (ASGI), real HTTP clients, a SQLite file shared by the processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from _servers import Server, gunicorn, uvicorn
from _web import FIREFOX, SECRET, async_store_class, shown

pytestmark = pytest.mark.slow
VISITORS, VIEWS = 20, 10
BOTS = [
    ("/", {"user-agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}),
    ("/", {"user-agent": "kube-probe/1.30"}),
    ("/health", {"user-agent": FIREFOX}),
    ("/assets/app.css", {"user-agent": FIREFOX}),
    ("/", {"user-agent": FIREFOX, "sec-purpose": "prefetch"}),
]


def views_by_session(url: str) -> dict[str, int]:
    """session id -> view_sequence, read from the file."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT session_id, view_sequence FROM sessions"))
            return {row[0]: row[1] for row in rows}
    except sa.exc.OperationalError:
        return {}
    finally:
        engine.dispose()


def settle(url: str, expected: dict[str, int], timeout: float = 20) -> dict[str, int]:
    """The counts once they equal ``expected`` (views are stored just after each
    response is sent), or as they are when ``timeout`` is up."""
    deadline = time.monotonic() + timeout
    while True:
        counts = views_by_session(url)
        if counts == expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


def browse(server: Server, clients: list[httpx.Client], views: int, sids: dict[int, str]) -> None:
    """Every client makes ``views`` page views at once with the others; their ids go
    to ``sids``, and each must stay the same on every view."""
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            for _ in range(views):
                response = clients[index].get(f"{server.url}/")
                assert response.status_code == 200
                sid = shown(response)[0]
                assert sid is not None
                assert sids.setdefault(index, sid) == sid
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []


def send_bots(server: Server, count: int) -> int:
    """``count`` bot, probe, static and prefetch requests; how many Set-Cookie came back."""
    cookies = 0
    with httpx.Client() as client:
        for n in range(count):
            path, headers = BOTS[n % len(BOTS)]
            response = client.get(f"{server.url}{path}", headers=headers)
            assert response.status_code == 200
            cookies += len(response.headers.get_list("set-cookie"))
    return cookies


def test_gunicorn_four_workers_keep_every_visitor_and_count_exactly(tmp_path: Path) -> None:
    """Behind gunicorn with 4 workers, 20 visitors x 10 views land as 20 sessions of
    exactly 10 views, whichever worker served each view; bots add no row."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    env = {"SAUCE_WEB_URL": url, "SAUCE_WEB_SECRET": SECRET}
    server = gunicorn(env, tmp_path / "gunicorn.log").start()
    clients = [httpx.Client(headers={"user-agent": FIREFOX}) for _ in range(VISITORS)]
    try:
        sids: dict[int, str] = {}
        browse(server, clients, VIEWS, sids)
        assert send_bots(server, 250) == 0
        expected = {sid: VIEWS for sid in sids.values()}
        assert settle(url, expected) == expected
    finally:
        for client in clients:
            client.close()
        server.stop()


@pytest.mark.skipif(async_store_class() is None, reason="sauce_sql.AsyncStore has not landed yet")
def test_uvicorn_restarted_mid_visit_keeps_every_visitor(tmp_path: Path) -> None:
    """Visitors browsing across a uvicorn restart keep their sessions and counts; bots
    and probes add no row."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    env = {"SAUCE_WEB_URL": url, "SAUCE_WEB_SECRET": SECRET}
    server = uvicorn(env, tmp_path / "uvicorn.log").start()
    clients = [httpx.Client(headers={"user-agent": FIREFOX}) for _ in range(VISITORS)]
    try:
        sids: dict[int, str] = {}
        browse(server, clients, 4, sids)
        assert settle(url, {sid: 4 for sid in sids.values()}) == {sid: 4 for sid in sids.values()}
        server.stop()
        server.start()
        browse(server, clients, 3, sids)
        assert send_bots(server, 250) == 0
        expected = {sid: 7 for sid in sids.values()}
        assert settle(url, expected) == expected
    finally:
        for client in clients:
            client.close()
        server.stop()
