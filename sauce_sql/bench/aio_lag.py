"""The asyncio bench's loop-lag tests: how long the event loop goes without running.

Two measures. A task sleeps a millisecond at a time and keeps the longest gap between
its ticks: what an application sees, the machine's own stalls included. On a shared
machine the scheduler makes gaps of milliseconds by itself (the thread waiting for a
CPU, or the loop's sleep ending late), so beside it the loop's selector times how
long each of the loop's turns runs between two waits for I/O: that is where a store
could hold the loop, on the CPU or blocked in a call. The time the thread spent
runnable but not running in that turn (Linux's ``/proc/thread-self/schedstat``) is
the machine's, and taken off; where that file is missing, nothing is.

The test with a write waiting for another process's lock is a median of rounds, each
beside a round of the same loop with no store call.
"""

from __future__ import annotations

import asyncio
import functools
import os
import selectors
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sauce_sql.aio import AsyncStore

__all__ = ["LAG_ROUNDS", "LoopClock", "lag_under_tasks", "lag_while_locked", "run_timed"]

T = TypeVar("T")


def _open_schedstat() -> int | None:
    """A descriptor of the calling thread's scheduler figures, if Linux has them."""
    try:
        # thread-self names the thread that opens it: the one that runs the loop.
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    except OSError:
        return None
    try:
        _runqueue_ns(fd)
    except (OSError, ValueError, IndexError):
        os.close(fd)
        return None
    return fd


def _runqueue_ns(schedstat: int) -> int:
    """Nanoseconds the thread has spent runnable but not running."""
    return int(os.pread(schedstat, 128, 0).split()[1])


class LoopClock(selectors.DefaultSelector):
    """The loop's selector, timing each turn of the loop between two waits for I/O
    from :meth:`arm` to :meth:`disarm`: the longest, less the time the thread waited
    for a CPU. Make it in the thread that will run the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.longest_ms = 0.0
        self._armed = False
        # Whether the turn under way is timed as it ends: the one that disarms is.
        self._timing = False
        self._schedstat = _open_schedstat()
        self._turn_began: float | None = None
        self._waited_before = 0

    @property
    def runqueue_subtracted(self) -> bool:
        """Whether the thread's waits for a CPU are taken off (Linux)."""
        return self._schedstat is not None

    def arm(self) -> None:
        """Time the turns from the one under way on, forgetting earlier ones."""
        self.longest_ms = 0.0
        self._armed = self._timing = True

    def disarm(self) -> None:
        """Stop timing once the turn under way has ended (and been timed)."""
        self._armed = False

    def select(self, timeout: float | None = None) -> Any:
        """Wait for I/O as the loop asks, first timing the turn that ends here."""
        began, schedstat = self._turn_began, self._schedstat
        if began is not None and self._timing:
            turn = time.perf_counter() - began
            if schedstat is not None:
                turn -= (_runqueue_ns(schedstat) - self._waited_before) / 1e9
            self.longest_ms = max(self.longest_ms, turn * 1000)
        self._timing = self._armed
        events = super().select(timeout)
        self._turn_began = time.perf_counter()
        if schedstat is not None:
            self._waited_before = _runqueue_ns(schedstat)
        return events

    def close(self) -> None:
        """Close the selector and the scheduler figures' descriptor."""
        super().close()
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None


def run_timed(main: Callable[[LoopClock], Coroutine[Any, Any, T]]) -> T:
    """``main(clock)`` on a new event loop whose selector is ``clock``."""
    clock = LoopClock()
    loop = asyncio.SelectorEventLoop(clock)
    try:
        return loop.run_until_complete(main(clock))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class _Lag:
    """The longest gap between the ticks of a task that sleeps 1 ms at a time."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.001)
            last = now

    def __enter__(self) -> _Lag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def lag_under_tasks(store: AsyncStore, ids: Sequence[str], seconds: float) -> float:
    """The loop's worst stall (ms) while 16 tasks increment for ``seconds``."""
    end = time.perf_counter() + seconds

    async def work(n: int) -> None:
        while time.perf_counter() < end:
            await store.inc_sequence(ids[n % len(ids)], "view")

    with _Lag() as lag:
        await asyncio.gather(*(work(n) for n in range(16)))
    return lag.worst * 1000


#: Rounds of the lag test: the worst stall of one second on a shared machine is the
#: scheduler's as often as the store's, so it is a median of rounds.
LAG_ROUNDS = 3


async def _locked_window(
    path: Path, call: Callable[[], Awaitable[Any]], clock: LoopClock
) -> tuple[float, float, float]:
    """The loop's worst stall (ms) while another process holds the write lock for a
    second and ``call()`` runs; its longest turn (ms, by ``clock``); how long the
    call took (ms)."""
    code = (
        "import sqlite3, time\n"
        f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
        "time.sleep(1.0); c.execute('COMMIT')\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        await asyncio.to_thread(child.stdout.readline)
        with _Lag() as lag:
            clock.arm()
            began = time.perf_counter()
            try:
                await call()
            finally:
                clock.disarm()
            took = time.perf_counter() - began
            await asyncio.sleep(0)  # the turn that ended the call, timed as it ends
    finally:
        await asyncio.to_thread(child.wait)
        if child.stdout is not None:
            child.stdout.close()
    return lag.worst * 1000, clock.longest_ms, took * 1000


async def lag_while_locked(
    store: AsyncStore, path: Path, sid: str, clock: LoopClock
) -> dict[str, Any]:
    """The loop's worst stall (ms) while another process holds the write lock for a
    second and a write waits for it, and its longest turn (``clock``, the loop's
    selector), medians of rounds; beside them, interleaved, the same loop's over the
    same second with no store call (the machine's)."""
    stalls: list[float] = []
    turns: list[float] = []
    took: list[float] = []
    idle: list[float] = []
    idle_turns: list[float] = []
    for round_ in range(LAG_ROUNDS):
        windows = [True, False] if round_ % 2 == 0 else [False, True]
        for with_store in windows:
            if with_store:
                write = functools.partial(store.inc_sequence, sid, "view")
                stall, turn, ms = await _locked_window(path, write, clock)
                stalls.append(stall)
                turns.append(turn)
                took.append(ms)
            else:
                stall, turn, _ = await _locked_window(path, lambda: asyncio.sleep(1.03), clock)
                idle.append(stall)
                idle_turns.append(turn)
    return {
        "worst_stall_ms": statistics.median(stalls),
        "worst_stall_ms_rounds": stalls,
        "longest_turn_ms": statistics.median(turns),
        "longest_turn_ms_rounds": turns,
        "runqueue_subtracted": clock.runqueue_subtracted,
        "write_took_ms": statistics.median(took),
        "no_call_stall_ms": statistics.median(idle),
        "no_call_stall_ms_rounds": idle,
        "no_call_longest_turn_ms": statistics.median(idle_turns),
    }
