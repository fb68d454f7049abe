"""The write floor: one writer at a time, no writer starved, no floor lost.

These run real threads against :class:`WriteFloor` itself; the store's own concurrency
tests (test_concurrency.py, test_connections.py) run it under real writes.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from _support import wait_for

from sauce_sql.backends.sqlite import floor as floor_module
from sauce_sql.backends.sqlite.floor import WriteFloor

WAIT = 10.0  # seconds; only reached when something is broken


def _wait_for(condition: Callable[[], bool]) -> None:
    # Threads here change state within microseconds: poll finely.
    wait_for(condition, WAIT, "the other threads", interval=0.0005)


@pytest.fixture
def floor() -> Iterator[WriteFloor]:
    """A floor, checked to be free and unqueued once the test is done with it."""
    made = WriteFloor()
    yield made
    assert made._holder is None
    assert not made._line


def test_one_writer_at_a_time(floor: WriteFloor) -> None:
    """However many threads write at once, never two are inside at the same time."""
    inside, most, calls = [0], [0], [0]
    start = threading.Barrier(6)

    def write() -> None:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0)  # let the others run while this one is in
        calls[0] += 1
        inside[0] -= 1

    def work() -> None:
        start.wait()
        for _ in range(300):
            floor.run(write)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert calls[0] == 1800
    assert most[0] == 1


def test_a_busy_writer_does_not_starve_the_others(floor: WriteFloor) -> None:
    """A thread writing back to back keeps the floor only for a slice: a thread that
    lines up behind it gets its turn while the busy one is still writing."""
    done = threading.Event()
    busy_calls = [0]
    deadline = time.monotonic() + WAIT

    def write() -> None:
        busy_calls[0] += 1
        time.sleep(0.0002)  # a write takes a while: others find the floor taken

    def busy() -> None:
        while not done.is_set() and time.monotonic() < deadline:
            floor.run(write)

    hog = threading.Thread(target=busy)
    hog.start()
    _wait_for(lambda: busy_calls[0] > 100)
    assert floor.run(lambda: "mine") == "mine"
    still_writing = hog.is_alive()
    done.set()
    hog.join(WAIT)
    assert still_writing


def test_a_holder_that_does_not_come_back_loses_the_floor(
    floor: WriteFloor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that kept the floor (it was writing in quick succession) and then went
    away does not keep the line waiting for longer than a slice."""
    monkeypatch.setattr(floor_module, "SLICE", 50_000_000)  # 50 ms: long enough to see
    monkeypatch.setattr(floor_module, "QUICK", 10**12)  # every return counts as quick
    inside, parked, release = threading.Event(), threading.Event(), threading.Event()
    kept: list[bool] = []

    def second_write() -> None:
        inside.set()
        _wait_for(lambda: len(floor._line) == 1)  # stays in until the other one waits

    def holder() -> None:
        floor.run(lambda: None)
        floor.run(second_write)
        kept.append(floor._holder == threading.get_ident())
        parked.set()
        release.wait(WAIT)

    first = threading.Thread(target=holder)
    first.start()
    assert inside.wait(WAIT)
    second = threading.Thread(target=lambda: floor.run(lambda: None))
    second.start()
    assert parked.wait(WAIT)
    second.join(WAIT)
    assert not second.is_alive(), "the waiter got the floor while the holder was away"
    release.set()
    first.join(WAIT)
    assert kept == [True], "the quick writer kept the floor as it left"


def test_an_error_in_a_write_gives_the_floor_back(floor: WriteFloor) -> None:
    """The write's exception reaches its caller, and the floor is free again."""

    def fail() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        floor.run(fail)
    assert floor.run(lambda: 1) == 1


def test_an_interrupted_waiter_leaves_the_line(floor: WriteFloor) -> None:
    """Ctrl-C while waiting in line removes the waiter; nobody waits for it after."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(WAIT)

    def interrupt_once_in_line() -> None:
        _wait_for(lambda: len(floor._line) == 1)
        _thread.interrupt_main()

    holder = threading.Thread(target=lambda: floor.run(hold))
    holder.start()
    assert entered.wait(WAIT)
    interrupter = threading.Thread(target=interrupt_once_in_line)
    interrupter.start()
    with pytest.raises(KeyboardInterrupt):
        floor.run(lambda: None)  # waits in line behind the holder until interrupted
    interrupter.join(WAIT)
    assert not floor._line
    release.set()
    holder.join(WAIT)
    assert floor.run(lambda: 2) == 2


def test_interrupts_anywhere_never_strand_the_other_writers(floor: WriteFloor) -> None:
    """Ctrl-C landing at random moments of the main thread's writes (entering, writing,
    leaving, waiting) never leaves the floor held by nobody who will give it back:
    another thread writing all along keeps getting turns."""
    stop, fire = threading.Event(), threading.Event()
    progress = [0]

    def busy() -> None:
        while not stop.is_set():
            floor.run(lambda: None)
            progress[0] += 1

    def interrupter() -> None:
        while not stop.is_set():
            if fire.wait(0.1):
                fire.clear()
                time.sleep(random.uniform(0, 0.0005))
                _thread.interrupt_main()

    threads = [threading.Thread(target=busy), threading.Thread(target=interrupter)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(200):
            fire.set()
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    floor.run(lambda: None)
            before = progress[0]
            _wait_for(functools.partial(lambda b: progress[0] > b, before))  # the other goes on
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
