"""Crash durability on a SQLite file: what the store acknowledged survives SIGKILL.

A child process writes in a loop and reports each write the store acknowledged over a
pipe; the test kills it with SIGKILL at a random moment, reopens the file and checks
that every reported write is there and that SQLite finds the file intact.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from _support import SPAWN

from sauce_sql import ReviveSession, Store

KILLS_PER_MODE = 4
HOT = ["d-1", "d-2", "d-3"]

pytestmark = pytest.mark.slow


def writer_child(url: str, durability: str, connection: Any) -> None:  # pragma: no cover
    """Child: increment and create sessions forever, reporting each acknowledged write."""
    connection.send(("hello", "", 0))
    with Store(url, durability=durability, clean_interval=None) as store:
        for sid in HOT:
            store.maybe_revive_session(ReviveSession(sid))
        n = 0
        while True:
            n += 1
            if n % 10 == 0:
                sid = store.new_session(user_agent=f"n{n}").session_id
                connection.send(("new", sid, 0))
            else:
                sid = HOT[n % len(HOT)]
                connection.send(("inc", sid, store.inc_sequence(sid, "view")))


def kill_after(url: str, durability: str, reports: int, rng: random.Random) -> list[Any]:
    """Run a writer child, SIGKILL it after ``reports`` acknowledged writes (or, for
    ``reports == 0``, at a random moment while it starts), and return every report."""
    reader, writer = SPAWN.Pipe(duplex=False)
    child = SPAWN.Process(target=writer_child, args=(url, durability, writer), daemon=True)
    child.start()
    writer.close()  # the child holds the only writing end: its death ends the pipe
    received = []
    try:
        assert reader.poll(60), "the writer child never started"
        received.append(reader.recv())
        if reports == 0:
            # Somewhere in the imports, the migrations or the first writes.
            time.sleep(rng.uniform(0, 0.5))
        while len(received) <= reports:
            assert reader.poll(60), "the writer child stopped reporting"
            received.append(reader.recv())
    finally:
        child.kill()
        child.join(30)
    assert child.exitcode == -9
    while True:  # what it reported just before it died
        try:
            received.append(reader.recv())
        except EOFError:
            break
    reader.close()
    return received[1:]


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_acknowledged_writes_survive_sigkill(tmp_path: Path, durability: str) -> None:
    """Every write the store acknowledged before a SIGKILL is on disk after reopening,
    and PRAGMA integrity_check says ok, kill after kill."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    path = tmp_path / "crash.db"
    url = f"sqlite:///{path}"
    highest: dict[str, int] = {}
    created: set[str] = set()
    total = 0
    for kill in range(KILLS_PER_MODE):
        reports = 0 if kill == 0 else rng.randrange(1, 400)
        for kind, sid, value in kill_after(url, durability, reports, rng):
            total += 1
            if kind == "inc":
                highest[sid] = max(highest.get(sid, 0), value)
            elif kind == "new":
                created.add(sid)
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)], seed
        check.close()
        with Store(url, clean_interval=None) as store:
            for sid, value in highest.items():
                session = store.lookup_session(sid)
                assert session is not None, (seed, kill, sid)
                # At most one write can have committed without being reported.
                assert value <= session.view_sequence <= value + 1, (seed, kill, sid)
            for sid in created:
                assert store.session_exists(sid), (seed, kill, sid)
    print(f"FIGURES durability={durability}: kills={KILLS_PER_MODE} acknowledged={total}")
    assert highest, "no write was acknowledged before the kills"
