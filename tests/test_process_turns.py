"""Turns between processes writing to one SQLite file (backends/sqlite/turns.py): the
heads of several processes' write paths wait for each other in the kernel, not in
SQLite's sleeping busy handler, within each call's deadline; a killed holder's turn
passes on; AsyncStore never waits for a turn on its loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sauce_sql import AsyncStore, Store, StoreUnavailable
from sauce_sql.backends.sqlite import dialect as sqlite_dialect
from sauce_sql.backends.sqlite import executor as executor_module
from sauce_sql.backends.sqlite import lease
from sauce_sql.bench.file_processes import writers_on_one_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX record locks"),
]

# A process with a store on the file that takes its turn and keeps it.
HOLD_TURN = """
import sys, time
from sauce_sql import Store
with Store("sqlite:///" + sys.argv[1], clean_interval=None) as store:
    store.new_session()
    executor = store._executor
    while not executor.take_turn(time.monotonic() + 5):
        time.sleep(0.01)  # the parent's presence is not seen yet
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    executor.give_turn()
    print("given", flush=True)
    time.sleep(60)
"""


# A process that writes a few times in a row, then stops writing with its store open.
WRITE_THEN_STOP = """
import sys, time
from sauce_sql import Store
with Store("sqlite:///" + sys.argv[1], clean_interval=None) as store:
    sid = store.new_session().session_id
    file_turns = store._executor._turns
    while not file_turns.needed():
        time.sleep(0.01)  # the parent's presence is not seen yet
    kept_at_the_end = False
    for _ in range(500):  # back to back; a busy machine may break the odd run
        store.inc_sequence(sid, "view")
        kept_at_the_end = file_turns._kept is not None  # by the write just made
        if file_turns.kept and kept_at_the_end:
            break
    print(file_turns.kept, kept_at_the_end, flush=True)
    time.sleep(60)
"""

# A process keeps its turn on one file for a long slice, closes that file's store (its
# descriptor then goes, and the number is free), and takes its turn on another file.
KEEP_THEN_CLOSE = """
import sys, time
from sauce_sql import Store
from sauce_sql.backends.sqlite import lease, turns
turns.SLICE = turns.LINGER = 1.0
first = Store("sqlite:///" + sys.argv[1], clean_interval=None).start()
sid = first.new_session().session_id
first_turns = first._executor._turns
while not first_turns.needed():
    time.sleep(0.01)
first.inc_sequence(sid, "view")  # the turn is kept for a second
first_fd = lease.handle(first_turns.key).fd
first.close()
with Store("sqlite:///" + sys.argv[2], clean_interval=None) as second:
    executor = second._executor
    while not executor.take_turn(time.monotonic() + 5):
        time.sleep(0.01)
    print(first_fd, lease.handle(executor._turns.key).fd, flush=True)
    for _ in range(500):
        if first_turns._kept is None:
            break
        time.sleep(0.01)  # until the locker thread's second is up
    print("let go" if first_turns._kept is None else "still kept", flush=True)
    time.sleep(60)
"""


def _holder(database: str, hold: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_TURN, database, str(hold)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "holding"
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    assert process.stdout is not None
    process.stdout.close()


def test_writers_of_eight_processes_wait_their_turn_not_seconds(tmp_path: Path) -> None:
    """Issue 8, item 9: 8 processes x 3 threads with durability="full" and one more
    process archiving a backlog; before the turns the slowest call took 3-5 s."""
    figures = writers_on_one_file(
        str(tmp_path), processes=8, threads=3, seconds=4.0, durability="full", backlog=20_000
    )
    assert figures["errors"] == 0, figures["error_kinds"]
    assert figures["latency"]["calls"] > 1000
    assert figures["lost"] == 0
    assert figures["extra"] == 0
    assert figures["out_of_order"] == 0
    assert figures["cleaned"] == 20_000
    assert figures["latency"]["worst_us"] < 1_000_000, figures


def test_a_process_keeps_its_turn_while_writing_and_lets_go_when_it_stops(
    tmp_path: Path,
) -> None:
    """Writes in a row take the process's kept turn (no hand-over to another process
    after each), and a process that stops writing lets the turn go within its slice:
    another process's write then waits for nothing."""
    database = str(tmp_path / "sessions.db")
    with Store(f"sqlite:///{database}", clean_interval=None) as store:
        sid = store.new_session().session_id
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITE_THEN_STOP, database], stdout=subprocess.PIPE, text=True
        )
        try:
            assert writer.stdout is not None
            taken_back, kept_at_the_end = writer.stdout.readline().split()
            started = time.monotonic()
            assert store.inc_sequence(sid, "view") == 1
            took = time.monotonic() - started
        finally:
            _stop(writer)
    assert int(taken_back) > 0  # writes in a row: one at least took the kept turn
    assert kept_at_the_end == "True"  # so the writer's last write left its turn kept
    assert took < 0.5  # the deadline is 5 s: the writer's turn was not kept for ever


def test_a_kept_turn_is_not_let_go_on_a_closed_descriptor_number(tmp_path: Path) -> None:
    """A store closed while its process keeps the turn: the descriptor goes (and the
    kernel lets its locks go with it). When the slice ends, the turn must not be
    "let go" on whatever file that descriptor number belongs to by then: here the
    process's turn on another file, which it holds."""
    first, second = str(tmp_path / "first.db"), str(tmp_path / "second.db")
    with (
        Store(f"sqlite:///{first}", clean_interval=None),
        Store(f"sqlite:///{second}", clean_interval=None),
    ):
        child = subprocess.Popen(
            [sys.executable, "-c", KEEP_THEN_CLOSE, first, second],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            first_fd, second_fd = child.stdout.readline().split()
            assert child.stdout.readline().strip() == "let go"
            held = lease.handle(lease.key(second))
            assert held is not None
            still_held = lease.holds_others(held.fd, 3)  # turns.py's turn byte
        finally:
            _stop(child)
    assert first_fd == second_fd  # the number was reused: the case this guards
    assert still_held


def test_a_killed_holder_passes_the_turn_on(tmp_path: Path) -> None:
    """While another process holds the turn a write waits; SIGKILL of the holder lets
    the kernel release it, and the write goes through at once."""
    database = str(tmp_path / "sessions.db")
    with Store(f"sqlite:///{database}", clean_interval=None) as store:
        sid = store.new_session().session_id
        holder = _holder(database, 60)
        try:
            time.sleep(0.3)  # past turns.RECHECK: this process sees the other one

            def kill() -> None:
                time.sleep(0.5)
                os.kill(holder.pid, signal.SIGKILL)

            killer = threading.Thread(target=kill)
            started = time.monotonic()
            killer.start()
            assert store.inc_sequence(sid, "view") == 1
            took = time.monotonic() - started
            killer.join()
        finally:
            _stop(holder)
        assert 0.4 < took < 2.0


def test_a_turn_never_given_ends_the_call_at_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One deadline per call: the wait for another process's turn ends in
    StoreUnavailable within the call's time, for a plain write and with
    durability="full"."""
    monkeypatch.setattr(sqlite_dialect, "BUSY_TIMEOUT_MS", 500)
    monkeypatch.setattr(executor_module, "BUSY_TIMEOUT_MS", 500)
    database = str(tmp_path / "sessions.db")
    for durability in ("normal", "full"):
        with Store(f"sqlite:///{database}", clean_interval=None, durability=durability) as store:
            sid = store.new_session().session_id
            holder = _holder(database, 60)
            try:
                time.sleep(0.3)
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="locked"):
                    store.inc_sequence(sid, "view")
                assert time.monotonic() - started < 1.5
            finally:
                _stop(holder)
            assert store.inc_sequence(sid, "view") == 1  # the holder's turn died with it


def test_async_store_never_waits_for_a_turn_on_its_loop(tmp_path: Path) -> None:
    """Another process holds the turn for 1 s: the AsyncStore's write waits off the
    loop (which keeps ticking) and lands once the turn is given back."""
    database = str(tmp_path / "sessions.db")

    async def main() -> tuple[float, float, int]:
        async with AsyncStore(f"sqlite:///{database}", clean_interval=None) as store:
            sid = (await store.new_session()).session_id
            holder = _holder(database, 1.0)
            try:
                await asyncio.sleep(0.3)
                worst, stop = 0.0, False

                async def tick() -> None:
                    nonlocal worst
                    last = time.monotonic()
                    while not stop:
                        await asyncio.sleep(0.005)
                        now = time.monotonic()
                        worst, last = max(worst, now - last), now

                ticker = asyncio.create_task(tick())
                started = time.monotonic()
                count = await store.inc_sequence(sid, "view")
                took = time.monotonic() - started
                stop = True
                await ticker
            finally:
                _stop(holder)
            return worst, took, count

    worst, took, count = asyncio.run(main())
    assert count == 1
    assert 0.3 < took < 3.0
    assert worst < 0.2
