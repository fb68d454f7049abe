"""Resource hygiene: close() leaves nothing behind, a closed store says so, and a store
started before os.fork() (gunicorn's preload) works in the child and in the parent."""

from __future__ import annotations

import gc
import json
import os
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _support import backend_pids, tagged_url, wait_for
from conftest import Backend, drop_tables

from sauce_sql import InvalidInput, ReviveSession, SauceSQLError, Store, StoreUnavailable

THREADS = 4


def busy(store: Store, prefix: str) -> None:
    """Use the store from several threads at once, so that it opens several connections."""
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            sid = f"{prefix}-{n}"
            barrier.wait(30)
            store.new_session(sid)
            for _ in range(20):
                store.inc_sequence(sid, "view")
                store.lookup_session(sid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def open_files() -> dict[int, str]:
    """This process's file descriptors and what each refers to."""
    found = {}
    for entry in Path("/proc/self/fd").iterdir():
        try:
            found[int(entry.name)] = os.readlink(entry)
        except FileNotFoundError:  # the directory listing's own descriptor
            continue
    return found


def store_url(backend: Backend) -> tuple[str, str | None]:
    """The backend's URL, tagged with an application_name on PostgreSQL."""
    if backend.dialect == "postgresql":
        return tagged_url(backend.url, "sauce_hygiene")
    return backend.url, None


def test_close_leaves_no_thread(backend: Backend) -> None:
    """After close() the cleaner thread is gone and no other thread was left running."""
    before = set(threading.enumerate())
    store = Store(backend.url, table_name=backend.table_name, clean_interval=0.01).start()
    assert store.get_state().cleaner_running
    busy(store, "threads")
    store.close()
    assert set(threading.enumerate()) == before
    assert not store.get_state().cleaner_running


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_close_leaves_no_file_or_socket(persistent_backend: Backend) -> None:
    """After close() no descriptor of the database file, its WAL or a server socket is
    left open, however many connections the store used."""
    backend = persistent_backend
    url, _ = store_url(backend)
    gc.collect()
    before = open_files()
    store = Store(url, table_name=backend.table_name, clean_interval=None).start()
    busy(store, "files")
    during = open_files()
    store.close()
    gc.collect()
    after = open_files()
    assert len(during) > len(before)
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    assert leaked == {}


@pytest.mark.postgresql
def test_close_ends_server_sessions(postgres_url: str) -> None:
    """After close() the server holds no session of the store (pg_stat_activity)."""
    url, name = tagged_url(postgres_url, "sauce_hygiene")
    table = f"t_{name[-10:]}"
    try:
        store = Store(url, table_name=table, clean_interval=0.01).start()
        busy(store, "pg")
        assert backend_pids(url, name)
        store.close()
        wait_for(lambda: not backend_pids(url, name), 10, "the server sessions to end")
    finally:
        drop_tables(postgres_url, table)


def test_passed_engine_stays_the_callers(tmp_path: Path) -> None:
    """Closing a store on the application's engine returns every connection to it and
    leaves the engine working."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        store = Store(engine=engine, clean_interval=0.01).start()
        busy(store, "engine")
        store.close()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM sessions")).scalar() == 4
    finally:
        engine.dispose()


def every_operation(store: Store) -> list[Any]:
    """Every operation that needs a started store."""
    return [
        lambda: store.new_session("x"),
        lambda: store.lookup_session("x"),
        lambda: store.session_exists("x"),
        lambda: store.inc_sequence("x", "view"),
        lambda: store.assign_user("x", "u"),
        lambda: store.revive_session(ReviveSession("x")),
        lambda: store.maybe_revive_session(ReviveSession("x")),
        lambda: store.cleanup(),
    ]


def test_closed_store_says_so(backend: Backend) -> None:
    """Before start() and after close() every operation raises a SauceSQLError saying
    the store is not started (not a driver error); get_state() still answers, close()
    is idempotent, and a closed store can be started again."""
    store = Store(backend.url, table_name=backend.table_name, clean_interval=None)
    for phase in ("before start", "after close"):
        for call in every_operation(store):
            with pytest.raises(SauceSQLError, match="start") as caught:
                call()
            assert not isinstance(caught.value, StoreUnavailable), phase
        assert store.get_state().cleaner_running is False
        store.start()
        store.new_session(f"s-{phase.split()[0]}")
        store.close()
        store.close()
    with store:
        # A restarted in-memory store is a new, empty database.
        assert store.session_exists("s-before") is not backend.is_memory
        assert store.session_exists("s-after") is not backend.is_memory


def fork_child(store: Store, writer: int) -> None:  # pragma: no cover - the forked child
    """In the child: use the store, report, close it as a worker would, and exit."""
    status = 1
    try:
        busy(store, "child")
        sid = store.new_session().session_id
        values = [store.inc_sequence(sid, "event") for _ in range(50)]
        parent_visible = store.lookup_session("parent") is not None
        store.close()
        report = {"values": values, "parent_visible": parent_visible}
        status = 0
    except BaseException:
        report = {"error": traceback.format_exc()}
    os.write(writer, json.dumps(report).encode())
    os._exit(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_store_started_before_fork(persistent_backend: Backend) -> None:
    """A store started before os.fork() works in the child (on fresh connections) and
    keeps working in the parent, even after the child closed its copy and exited."""
    backend = persistent_backend
    url, _ = store_url(backend)
    store = Store(url, table_name=backend.table_name, clean_interval=None).start()
    try:
        store.new_session("parent")
        busy(store, "before-fork")  # the parent now holds several connections
        acked = [store.inc_sequence("parent", "view") for _ in range(5)]
        reader, writer = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12 warns when other tests left threads running; the store has none.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover
            os.close(reader)
            fork_child(store, writer)
        os.close(writer)
        # The parent writes while the child does.
        for _ in range(50):
            acked.append(store.inc_sequence("parent", "view"))
        with os.fdopen(reader, "rb") as pipe:
            report = json.loads(pipe.read())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, report
        assert report["values"] == list(range(1, 51))
        assert report["parent_visible"]
        # The child's exit and its close() left the parent's connections alone.
        for _ in range(20):
            acked.append(store.inc_sequence("parent", "view"))
            assert store.lookup_session("parent") is not None
        busy(store, "after-fork")
        assert acked == list(range(1, len(acked) + 1))
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_store_forked_right_after_start(persistent_backend: Backend) -> None:
    """A store forked straight after start(), before any call (gunicorn's preload),
    gives parent and child connections of their own: both count correctly."""
    backend = persistent_backend
    url, _ = store_url(backend)
    store = Store(url, table_name=backend.table_name, clean_interval=None).start()
    try:
        reader, writer = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover
            os.close(reader)
            fork_child(store, writer)
        os.close(writer)
        sid = store.new_session("parent").session_id
        acked = [store.inc_sequence(sid, "view") for _ in range(200)]
        with os.fdopen(reader, "rb") as pipe:
            report = json.loads(pipe.read())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, report
        assert report["values"] == list(range(1, 51))
        acked += [store.inc_sequence(sid, "view") for _ in range(20)]
        assert acked == list(range(1, 221))
    finally:
        store.close()


def test_in_memory_engine_must_be_shareable() -> None:
    """An application's in-memory SQLite engine that would give each thread its own
    database is refused with InvalidInput naming the fix."""
    engine = sa.create_engine("sqlite://")
    try:
        with pytest.raises(InvalidInput, match="StaticPool"):
            Store(engine=engine)
    finally:
        engine.dispose()
