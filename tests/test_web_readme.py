"""The README's example web apps run as printed."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from _web import FIREFOX, SECRET, LoopThread, async_store_class

README = Path(__file__).resolve().parent.parent / "README.md"


def example(name: str) -> str:
    """The code of the README's ``web-example: name`` block."""
    text = README.read_text()
    found = re.search(
        rf"<!-- web-example: {name} -->\n```python\n(.*?)```\n<!-- /web-example -->", text, re.S
    )
    assert found is not None, f"no {name} example in the README"
    return found.group(1)


def load(name: str, directory: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import the example as a module, run from ``directory`` with SAUCE_SECRET set."""
    monkeypatch.chdir(directory)
    monkeypatch.setenv("SAUCE_SECRET", SECRET)
    path = directory / f"readme_{name}.py"
    path.write_text(example(name))
    spec = importlib.util.spec_from_file_location(f"readme_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def counts(directory: Path) -> list[tuple[int, int]]:
    """(views, events) of every session in the example's database."""
    with sqlite3.connect(directory / "sessions.db") as connection:
        return connection.execute("SELECT view_sequence, event_sequence FROM sessions").fetchall()


def test_flask_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Flask example greets the visitor by id, counts its page view and its event."""
    app = load("flask", tmp_path, monkeypatch).app
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(
        transport=transport, base_url="http://t", headers={"user-agent": FIREFOX}
    ) as c:
        assert "Hello, visitor " in c.get("/").text
        assert c.post("/signup").json() == {"event": 1}
    assert counts(tmp_path) == [(1, 1)]
    app.extensions["sauce_sql"].store.close()


@pytest.mark.skipif(async_store_class() is None, reason="sauce_sql.AsyncStore has not landed yet")
def test_fastapi_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The FastAPI example greets the visitor by id, counts its page view and its event."""
    module = load("fastapi", tmp_path, monkeypatch)
    loop = LoopThread()

    async def visit() -> None:
        transport = httpx.ASGITransport(app=module.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://t", headers={"user-agent": FIREFOX}
        ) as client:
            assert "Hello, visitor " in (await client.get("/")).text
            assert (await client.post("/signup")).json() == {"event": 1}
        await module.store.close()

    try:
        loop.run(visit())
    finally:
        loop.close()
    assert counts(tmp_path) == [(1, 1)]
