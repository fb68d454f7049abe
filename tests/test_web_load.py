"""The middleware under concurrent visitors and through a database outage, on SQLite
files and PostgreSQL, both adapters."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _tcpproxy import TcpProxy
from _web import ADAPTERS, SECRET, Site, Visitor, async_store_class, run_all, shown
from conftest import Backend

VISITORS, VIEWS = 40, 15


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    """Each adapter; ASGI skips while this checkout has no AsyncStore."""
    if request.param == "asgi" and async_store_class() is None:
        pytest.skip("sauce_sql.AsyncStore has not landed in this checkout yet")
    name: str = request.param
    return name


@pytest.fixture
def web_site(adapter: str, persistent_backend: Backend) -> Iterator[Site]:
    """A site on a SQLite file or on PostgreSQL."""
    made = Site(adapter, persistent_backend.url, persistent_backend.table_name, secret_key=SECRET)
    yield made
    made.close()


@pytest.mark.slow
def test_concurrent_visitors_are_counted_exactly(web_site: Site) -> None:
    """40 visitors making 15 page views each, all at once, end as 40 sessions of
    exactly 15 views, with no error and one cookie each."""
    visitors = [web_site.visitor() for _ in range(VISITORS)]
    cookies: list[int] = []
    if web_site.loop is None:
        barrier = threading.Barrier(VISITORS)
        errors: list[BaseException] = []

        def browse(visitor: Visitor) -> None:
            try:
                barrier.wait()
                got = 0
                for _ in range(VIEWS):
                    response = visitor.get("/")
                    assert response.status_code == 200
                    got += len(response.headers.get_list("set-cookie"))
                cookies.append(got)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=browse, args=(v,)) for v in visitors]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert errors == []
    else:

        async def browse_async(index: int) -> int:
            got = 0
            for _ in range(VIEWS):
                response = await visitors[index].arequest("GET", "/")
                assert response.status_code == 200
                got += len(response.headers.get_list("set-cookie"))
            return got

        cookies = run_all(web_site.loop, [browse_async(i) for i in range(VISITORS)])
    rows = web_site.rows()
    assert len(rows) == VISITORS
    assert sorted(row["view_sequence"] for row in rows) == [VIEWS] * VISITORS
    assert cookies == [1] * VISITORS
    assert web_site.state().views == VISITORS * VIEWS


@pytest.mark.postgresql
@pytest.mark.slow
def test_outage_mid_visit_serves_pages_and_tracking_resumes(
    adapter: str, postgres_url: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """When the database goes away under a running app, pages are still served, the
    failure is logged once and counted, and counting resumes by itself when it is back."""
    url = sa.make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    table = f"w_{int(time.time() * 1000) % 10**9}"
    site = Site(
        adapter,
        through,
        table,
        secret_key=SECRET,
        retry_after=0.05,
        store_options={"timeout": 2.0},
    )
    try:
        visitor = site.visitor()
        sid = shown(visitor.get("/"))[0]
        visitor.get("/")
        proxy.cut()
        with caplog.at_level(logging.WARNING, logger="sauce_sql.web"):
            for _ in range(5):
                response = visitor.get("/")
                assert response.status_code == 200
                assert shown(response)[0] == sid
                time.sleep(0.06)
        outage_logs = [r for r in caplog.records if "not tracked" in r.getMessage()]
        assert len(outage_logs) == 1
        assert site.state().store_failures >= 1
        assert not site.state().store_available
        proxy.restore()
        deadline = time.monotonic() + 30
        while not site.state().store_available and time.monotonic() < deadline:
            visitor.get("/")
            time.sleep(0.1)
        assert site.state().store_available
        before = site.row(sid or "")["view_sequence"]
        visitor.get("/")
        assert site.row(sid or "")["view_sequence"] == before + 1
        assert before >= 3  # the two views before the outage and the one that found it back
    finally:
        site.close()
        proxy.close()
        from conftest import drop_tables

        drop_tables(postgres_url, table)
