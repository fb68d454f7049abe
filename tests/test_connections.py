"""The executor: SQLite writers taking turns or sharing commits, held connections, the
error boundary.

The group-commit tests (``durability="full"``) stop the first writer inside its
statement (a SQL function that waits on an event), queue the others behind it, and
only then let it go, so that the others are committed together as one group, whatever
the machine's speed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import FakeClock, StoreFactory, drop_tables

from sauce_sql import Store, StoreUnavailable
from sauce_sql.backends.base import Result
from sauce_sql.backends.sqlite.connections import MAX_IDLE
from sauce_sql.backends.sqlite.executor import SQLiteExecutor
from sauce_sql.prepared import Prepared, utc_passthrough

WAIT = 10.0  # seconds; only reached when something is broken


class Gate:
    """A SQL function ``gate(x)`` that returns x, but holds the first caller once armed."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, value: Any) -> Any:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(WAIT)
        return value


class Counters:
    """An executor over a table of named counters that must stay >= 0."""

    def __init__(self, engine: sa.Engine, executor: SQLiteExecutor) -> None:
        self.engine, self.executor = engine, executor
        table = sa.table("counters", sa.column("k", sa.String()), sa.column("n", sa.Integer()))
        key = sa.func.gate(sa.bindparam("k", type_=sa.String()))
        add = (
            sa.update(table)
            .where(table.c.k == key)
            .values(n=table.c.n + sa.bindparam("d", type_=sa.Integer()))
            .returning(table.c.n)
        )
        self.add = Prepared(add, engine.dialect, ("k", "d"))
        read = sa.select(table.c.n).where(table.c.k == sa.bindparam("k", type_=sa.String()))
        self.read = Prepared(read, engine.dialect, ("k",))

    def increment(self, key: str, delta: int = 1) -> int:
        rows, _ = self.executor.write(self.add, {"k": key, "d": delta})
        return int(rows[0][0])

    def value(self, key: str) -> int:
        rows, _ = self.executor.read(self.read, {"k": key})
        return int(rows[0][0])


@pytest.fixture(params=["file", "memory"])
def counters(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Counters, Gate]]:
    """Counters 'a' and 'b' at 0 on a SQLite file or in memory, with a gate; writes
    share commits (``durability="full"``)."""
    yield from _counters(request.param, "full", tmp_path)


@pytest.fixture(params=[("file", "normal"), ("memory", "normal"), ("file", "full")])
def any_counters(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Counters, Gate]]:
    """Counters as above, writers taking turns (normal) or sharing commits (full)."""
    kind, durability = request.param
    yield from _counters(kind, durability, tmp_path)


def _counters(kind: str, durability: str, tmp_path: Path) -> Iterator[tuple[Counters, Gate]]:
    gate = Gate()
    url = f"sqlite:///{tmp_path / 'c.db'}" if kind == "file" else "sqlite://"
    pool = {"poolclass": sa.StaticPool} if kind == "memory" else {}
    engine = sa.create_engine(url, connect_args={"check_same_thread": False}, **pool)
    sa.event.listen(engine, "connect", lambda c, _: c.create_function("gate", 1, gate))
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TABLE counters (k TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0))"
        )
        connection.exec_driver_sql("INSERT INTO counters VALUES ('a', 0), ('b', 0)")
        connection.exec_driver_sql(
            "CREATE TRIGGER poison BEFORE UPDATE ON counters WHEN NEW.k = 'poison' "
            "BEGIN SELECT RAISE(ROLLBACK, 'poisoned'); END"
        )
        connection.exec_driver_sql("INSERT INTO counters VALUES ('poison', 0)")
    executor = SQLiteExecutor(engine, durability=durability, describe=url)
    yield Counters(engine, executor), gate
    executor.close()
    engine.dispose()


def _queued(executor: SQLiteExecutor) -> int:
    """Writes waiting in the queue, and the one being led."""
    group = executor.group_commit
    return len(group._queue) + (group._leader is not None)


def run_as_group(
    counters: Counters, gate: Gate, writes: list[Callable[[], Any]]
) -> tuple[Any, list[Any]]:
    """Hold a first increment of 'b' in its statement, queue ``writes`` behind it, then
    release: the queued writes run as one group. Returns each one's result or error."""
    outcomes: list[Any] = [None] * len(writes)
    first: list[Any] = []

    def call(index: int, write: Callable[[], Any]) -> None:
        try:
            outcomes[index] = write()
        except Exception as exc:
            outcomes[index] = exc

    gate.armed = True
    leader = threading.Thread(target=lambda: first.append(counters.increment("b")))
    leader.start()
    assert gate.entered.wait(WAIT)
    threads = [threading.Thread(target=call, args=(i, w)) for i, w in enumerate(writes)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + WAIT
    while _queued(counters.executor) < len(writes) + 1:
        assert time.monotonic() < deadline, "the writers never queued"
        time.sleep(0.001)
    gate.release.set()
    for thread in [leader, *threads]:
        thread.join(WAIT)
    return first[0], outcomes


def test_each_writer_of_a_group_gets_its_own_result(counters: tuple[Counters, Gate]) -> None:
    """Writers committed together each get the value their own increment produced."""
    counter, gate = counters
    first, results = run_as_group(counter, gate, [lambda: counter.increment("a")] * 12)
    assert first == 1
    assert sorted(results) == list(range(1, 13))
    assert counter.value("a") == 12
    assert (counter.executor.group_commit.groups, counter.executor.group_commit.grouped_writes) == (
        1,
        12,
    )


def test_a_failing_write_does_not_fail_its_group(counters: tuple[Counters, Gate]) -> None:
    """A statement that fails in a group gets its own error; the others commit."""
    counter, gate = counters
    writes = [lambda: counter.increment("a")] * 3
    writes += [lambda: counter.increment("a", -100)]  # breaks CHECK (n >= 0)
    writes += [lambda: counter.increment("a")] * 3
    _, outcomes = run_as_group(counter, gate, writes)
    failed = outcomes[3]
    assert isinstance(failed, StoreUnavailable)
    assert isinstance(failed.__cause__, sqlite3.IntegrityError)
    assert sorted(outcomes[:3] + outcomes[4:]) == list(range(1, 7))
    assert counter.value("a") == 6


def test_a_write_rolling_back_the_transaction_spares_the_others(
    counters: tuple[Counters, Gate],
) -> None:
    """A write that ends the group's transaction fails alone; the others are redone once."""
    counter, gate = counters
    writes = [lambda: counter.increment("a")] * 3
    writes += [lambda: counter.increment("poison")]
    writes += [lambda: counter.increment("a")] * 3
    _, outcomes = run_as_group(counter, gate, writes)
    assert isinstance(outcomes[3], StoreUnavailable)
    assert "poisoned" in str(outcomes[3])
    assert sorted(outcomes[:3] + outcomes[4:]) == list(range(1, 7))
    assert counter.value("a") == 6
    assert counter.value("poison") == 0


def test_many_threads_lose_no_write(any_counters: tuple[Counters, Gate]) -> None:
    """Threads writing at once: each result is unique and the total is exact."""
    counter, _ = any_counters
    results: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def work(into: list[int]) -> None:
        start.wait()
        for _ in range(200):
            into.append(counter.increment("a"))

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    every = [value for mine in results for value in mine]
    assert sorted(every) == list(range(1, 1601))
    assert all(mine == sorted(mine) for mine in results)
    assert counter.value("a") == 1600


def test_readers_reuse_a_bounded_set_of_connections(tmp_path: Path) -> None:
    """Reads from many threads hold no more idle connections than the bound."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    executor = SQLiteExecutor(engine, durability="normal", describe="r.db")
    one = Prepared(sa.select(sa.literal_column("1")), engine.dialect, ())
    barrier = threading.Barrier(MAX_IDLE + 4)

    def read() -> Result:
        barrier.wait()
        return executor.read(one, {})

    threads = [threading.Thread(target=read) for _ in range(MAX_IDLE + 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(executor._idle) <= MAX_IDLE
    for _ in range(100):
        executor.read(one, {})
    assert len(executor.held) <= MAX_IDLE
    executor.close()
    assert not executor.held
    engine.dispose()


def test_store_threads_get_consecutive_counts(make_store: StoreFactory) -> None:
    """Through the store, concurrent increments of one session return 1..n exactly once."""
    store = make_store()
    sid = store.new_session().session_id
    results: list[int] = []
    start = threading.Barrier(4)

    def work() -> None:
        start.wait()
        for _ in range(100):
            results.append(store.inc_sequence(sid, "view"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert sorted(results) == list(range(1, 401))
    session = store.lookup_session(sid)
    assert session is not None
    assert session.view_sequence == 400


def test_checkpoint_folds_the_log_in_beside_the_writer(tmp_path: Path) -> None:
    """checkpoint() copies the committed pages of the log into the database file."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    executor = SQLiteExecutor(engine, durability="normal", describe="w.db")
    table = sa.table("t", sa.column("x", sa.String()))
    insert = Prepared(sa.insert(table).values(x=sa.bindparam("x")), engine.dialect, ("x",))
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x TEXT)")
    for x in range(100):  # some 15 pages, far below the 1000 of an automatic checkpoint
        executor.write(insert, {"x": f"{x:0500}"})
    before = (tmp_path / "w.db").stat().st_size
    executor.checkpoint()
    assert (tmp_path / "w.db").stat().st_size > before
    executor.close()
    engine.dispose()


def test_postgresql_times_come_back_in_utc_whatever_the_server_zone(postgres_url: str) -> None:
    """A PostgreSQL session set far from UTC changes neither the instants nor their zone."""
    table = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_url, connect_args={"options": "-c timezone=Asia/Kathmandu"})
    now = datetime.now(timezone(timedelta(hours=-7))).replace(microsecond=123456)
    try:
        clock = FakeClock(now)
        with Store(engine=engine, table_name=table, clean_interval=None, clock=clock) as store:
            store.new_session("s", user_agent="ua")
            found = store.lookup_session("s")
        assert found is not None
        for moment in (found.created_at, found.last_modified, found.expires_at):
            assert moment.tzinfo is timezone.utc
        assert found.created_at == now
        assert found.expires_at == now + timedelta(hours=1)
    finally:
        engine.dispose()
        drop_tables(postgres_url, table)


def test_utc_passthrough_converts_all_but_utc_datetimes() -> None:
    """UTC datetimes pass as they are; others, and None, go through the type's converter."""
    utc = datetime(2026, 1, 1, tzinfo=timezone.utc)
    east = datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    convert = utc_passthrough(lambda value: ("converted", value))
    assert convert(utc) is utc
    assert convert(east) == ("converted", east)
    assert convert(None) == ("converted", None)
