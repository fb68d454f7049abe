"""Database faults: killed PostgreSQL connections, an unreachable server, bad SQLite files.

During an outage calls raise StoreUnavailable (never a bare driver error, never a
hang); afterwards the store recovers by itself. Reads may be retried on a fresh
connection, increments never are, so a counter never moves by more than the calls
that were acknowledged or failed. A bad SQLite file is reported by name and left as
it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sqlite3
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from _support import CounterLog, assert_cleaner_works, tagged_url, terminate_backends
from _tcpproxy import TcpProxy
from conftest import PG_URL, drop_tables, require_postgres

from sauce_sql import AsyncStore, Store, StoreUnavailable

PG = pytest.mark.postgresql


@pytest.fixture
def pg_table() -> Iterator[tuple[str, str, str]]:
    """A store URL tagged with its own application_name, that name, and a fresh table."""
    require_postgres()
    url, name = tagged_url(PG_URL, "sauce_fault")
    table = f"t_{name[-10:]}"
    yield url, name, table
    drop_tables(PG_URL, table)


@PG
def test_killed_idle_connections_are_replaced(pg_table: tuple[str, str, str]) -> None:
    """After its server processes are killed, reads succeed at once (retried on a fresh
    connection) and an increment either succeeds or fails without being applied."""
    url, name, table = pg_table
    with Store(url, table_name=table, clean_interval=None) as store:
        store.new_session("k")
        assert store.inc_sequence("k", "view") == 1
        for _ in range(3):
            assert terminate_backends(url, name) >= 1
            assert store.lookup_session("k") is not None
        log = CounterLog()
        log.last = 1
        for _ in range(3):
            terminate_backends(url, name)
            for _attempt in range(2):  # a dead pooled connection may fail one write
                try:
                    value = store.inc_sequence("k", "view")
                except StoreUnavailable as exc:
                    failure: StoreUnavailable = exc
                else:
                    log.ok(value)
                    break
                assert failure.__cause__ is not None
                log.fail()
                session = store.lookup_session("k")
                assert session is not None
                assert session.view_sequence == log.last  # not applied, not retried
            else:
                pytest.fail("the store did not recover after its connections were killed")
        session = store.lookup_session("k")
        assert session is not None
        assert session.view_sequence == log.last


@PG
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_async_store_replaces_killed_idle_connections(
    pg_table: tuple[str, str, str], driver: str
) -> None:
    """AsyncStore as the sync store above: after its server processes are killed, a
    read succeeds at once (retried once on a fresh connection); an increment on the
    dead connection fails with the driver's error as its cause and is not applied (a
    write is never retried), and the next one succeeds."""
    url, name, table = pg_table
    url = sa.make_url(url).set(drivername=f"postgresql+{driver}").render_as_string(False)

    async def scenario() -> CounterLog:
        async with AsyncStore(url, table_name=table, clean_interval=None) as store:
            await store.new_session("k")
            assert await store.inc_sequence("k", "view") == 1
            for _ in range(3):
                assert terminate_backends(url, name) >= 1
                assert await store.lookup_session("k") is not None
            log = CounterLog()
            log.last = 1
            for _ in range(3):
                assert terminate_backends(url, name) >= 1
                for _attempt in range(2):  # the dead pooled connection fails one write
                    try:
                        value = await store.inc_sequence("k", "view")
                    except StoreUnavailable as exc:
                        failure: StoreUnavailable = exc
                    else:
                        log.ok(value)
                        break
                    assert failure.__cause__ is not None
                    log.fail()
                    session = await store.lookup_session("k")
                    assert session is not None
                    assert session.view_sequence == log.last  # not applied
                else:
                    pytest.fail("the store's writes did not recover after the kill")
            return log

    log = asyncio.run(asyncio.wait_for(scenario(), 60))
    # Nothing is awaited between a kill and the increment after it, so the store cannot
    # have noticed: a write retried on a fresh connection would succeed every time.
    assert log.failed >= 1, "no increment failed on a killed connection: retried?"
    assert log.acked == 3


@PG
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_async_read_is_retried_when_its_new_connection_dies_while_set_up(driver: str) -> None:
    """AsyncStore's first connection dies as it sets its session up (reset at its SET
    TIME ZONE): start()'s first read, the server's clock, is retried once on a fresh
    connection, and the store works."""
    require_postgres()
    target = sa.make_url(PG_URL)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    table = f"t_setup_{uuid.uuid4().hex[:10]}"
    proxied = target.set(drivername=f"postgresql+{driver}", host="127.0.0.1", port=proxy.port)
    url = proxied.update_query_dict({"sslmode": "disable"}).render_as_string(False)

    async def scenario() -> int:
        async with AsyncStore(url, table_name=table, clean_interval=None) as store:
            assert proxy.reset.is_set()
            sid = (await store.new_session()).session_id
            return await store.inc_sequence(sid, "view")

    try:
        proxy.reset_once_when(b"SET TIME ZONE 'UTC'")
        assert asyncio.run(asyncio.wait_for(scenario(), 60)) == 1
    finally:
        proxy.close()
        drop_tables(PG_URL, table)


@PG
@pytest.mark.slow
def test_connections_killed_while_in_use(pg_table: tuple[str, str, str]) -> None:
    """Killing the store's server processes under 4 busy threads gives StoreUnavailable
    and nothing else, no increment applied twice, and the cleaner keeps running."""
    url, name, table = pg_table
    threads, kills = 4, 6
    store = Store(url, table_name=table, clean_interval=0.05).start()
    errors: list[BaseException] = []
    logs = [CounterLog() for _ in range(threads)]
    progress = threading.Semaphore(0)
    stop = threading.Event()

    def work(n: int) -> None:
        sid, log = f"busy-{n}", logs[n]
        try:
            store.new_session(sid)
            while not stop.is_set():
                try:
                    log.ok(store.inc_sequence(sid, "event"))
                    store.lookup_session(sid)
                except StoreUnavailable:
                    log.fail()
                progress.release()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            progress.release()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    try:
        try:
            for worker in workers:
                worker.start()
            for _ in range(kills):
                for _ in range(40):  # let the workers make progress between kills
                    assert progress.acquire(timeout=30), "the workers stopped making progress"
                assert not errors, errors
                terminate_backends(url, name)
            for _ in range(40):  # and recover afterwards
                assert progress.acquire(timeout=30), "the store did not recover"
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        assert not errors, errors
        for n, log in enumerate(logs):
            log.ok(store.inc_sequence(f"busy-{n}", "event"))
            session = store.lookup_session(f"busy-{n}")
            assert session is not None
            assert session.event_sequence == log.last
        assert_cleaner_works(store, url, table)
        acked = sum(log.acked for log in logs)
        failed = sum(log.failed for log in logs)
        print(f"FIGURES pg kills={kills}: acked={acked} failed={failed}")
    finally:
        store.close()


@PG
def test_unreachable_server_refused_fast() -> None:
    """A server that refuses connections gives StoreUnavailable within seconds, with
    the driver's error chained and the password hidden."""
    store = Store("postgresql+psycopg://postgres:s3cret@127.0.0.1:1/test", clean_interval=None)
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        store.start()
    assert time.monotonic() - began < 5
    assert caught.value.__cause__ is not None
    assert "s3cret" not in str(caught.value)
    store.close()


@PG
@pytest.mark.slow
def test_silent_server_times_out() -> None:
    """A server that accepts the TCP connection and never answers gives StoreUnavailable
    within seconds (the default connect timeout), not a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = Store(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test", clean_interval=None)
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.start()
        assert time.monotonic() - began < 15
        store.close()


# -- SQLite files -------------------------------------------------------------------


def digest(path: Path) -> str:
    """The file's contents, hashed."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_names_file(exc: BaseException, path: Path) -> None:
    """The error is StoreUnavailable, names the file and chains the cause."""
    assert isinstance(exc, StoreUnavailable), repr(exc)
    assert str(path) in str(exc)
    assert exc.__cause__ is not None


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    """A file that is not a database gives StoreUnavailable naming it, and is left as it was."""
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = digest(path)
    store = Store(f"sqlite:///{path}", clean_interval=None)
    with pytest.raises(StoreUnavailable) as caught:
        store.start()
    assert_names_file(caught.value, path)
    store.close()
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_missing_directory(tmp_path: Path) -> None:
    """A file in a directory that does not exist gives StoreUnavailable naming it, and
    no directory is created."""
    path = tmp_path / "missing" / "deeper" / "sessions.db"
    store = Store(f"sqlite:///{path}", clean_interval=None)
    with pytest.raises(StoreUnavailable) as caught:
        store.start()
    assert_names_file(caught.value, path)
    store.close()
    assert not (tmp_path / "missing").exists()


def attempt(call: Callable[[], object]) -> list[object]:
    """What a call did: ["ok", its value] or ["unavailable", message, cause chained]."""
    try:
        return ["ok", repr(call())]
    except StoreUnavailable as exc:
        return ["unavailable", str(exc), exc.__cause__ is not None]


def probe_as_other_user(url: str) -> dict[str, list[object]]:
    """Start a store on ``url`` and try to read and write, in a forked child running as
    ``nobody`` when we are root (root may write any file); return what each call did."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.close(reader)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            store = Store(url, clean_interval=None)
            report = {"start": attempt(store.start)}
            if report["start"][0] == "ok":
                report["read"] = attempt(lambda: store.lookup_session("ro") is not None)
                report["new"] = attempt(lambda: store.new_session("ro-2"))
                report["inc"] = attempt(lambda: store.inc_sequence("ro", "view"))
            store.close()
            os.write(writer, json.dumps(report).encode())
            status = 0
        except BaseException:
            os.write(writer, json.dumps({"error": traceback.format_exc()}).encode())
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    result: dict[str, list[object]] = json.loads(output)
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="sauce_ro_"))
    path.chmod(0o755)
    yield path
    path.chmod(0o755)
    for child in path.iterdir():
        child.chmod(0o644)
        child.unlink()
    path.rmdir()


def test_read_only_file(shared_dir: Path) -> None:
    """A database file the process may not write gives StoreUnavailable naming it on
    writing (or on start), and is left exactly as it was."""
    path = shared_dir / "ro.db"
    url = f"sqlite:///{path}"
    with Store(url, clean_interval=None) as store:
        store.new_session("ro")
        store.inc_sequence("ro", "view")
    # The cleanup lease's file stays (sauce_sql/backends/sqlite/lease.py).
    assert sorted(p.name for p in shared_dir.iterdir()) == ["ro.db", "ro.db-sauce-cleanup"]
    path.chmod(0o444)
    shared_dir.chmod(0o555)
    before = digest(path)
    report = probe_as_other_user(url)
    started = report["start"][0] == "ok"
    outcomes = [report["new"], report["inc"]] if started else [report["start"]]
    for outcome in outcomes:
        assert outcome[0] == "unavailable", report
        assert str(path) in str(outcome[1]), report
        assert outcome[2], report  # the cause is chained
    assert digest(path) == before
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as check:
        assert check.execute("SELECT view_sequence FROM sessions").fetchall() == [(1,)]
    check.close()


@pytest.mark.slow
def test_locked_file_gives_store_unavailable(tmp_path: Path) -> None:
    """A file another connection keeps locked past the busy timeout gives
    StoreUnavailable naming it; nothing is written, and the store works once freed."""
    path = tmp_path / "locked.db"
    with Store(f"sqlite:///{path}", clean_interval=None) as store:
        store.new_session("l")
        locker = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            began = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                store.inc_sequence("l", "view")
            assert time.monotonic() - began < 30
            assert_names_file(caught.value, path)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert store.inc_sequence("l", "view") == 1
