"""The asyncio bench's loop-lag tests: how long the event loop goes without running.

A task sleeps a millisecond at a time and keeps the longest gap between its ticks.
On a shared machine the scheduler makes gaps of milliseconds by itself, so the test
with a write waiting for another process's lock is a median of rounds, each beside a
round of the same loop with no store call.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from sauce_sql.aio import AsyncStore

__all__ = ["LAG_ROUNDS", "lag_under_tasks", "lag_while_locked"]


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


async def _locked_window(path: Path, call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """The loop's worst stall (ms) while another process holds the write lock for a
    second and ``call()`` runs; how long the call took (ms)."""
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
            began = time.perf_counter()
            await call()
            took = time.perf_counter() - began
    finally:
        await asyncio.to_thread(child.wait)
        if child.stdout is not None:
            child.stdout.close()
    return lag.worst * 1000, took * 1000


async def lag_while_locked(store: AsyncStore, path: Path, sid: str) -> dict[str, Any]:
    """The loop's worst stall (ms) while another process holds the write lock for a
    second and a write waits for it, a median of rounds; beside it, interleaved, the
    same loop's worst stall over the same second with no store call (the machine's)."""
    stalls: list[float] = []
    took: list[float] = []
    idle: list[float] = []
    for round_ in range(LAG_ROUNDS):
        windows = [True, False] if round_ % 2 == 0 else [False, True]
        for with_store in windows:
            if with_store:
                stall, write = await _locked_window(path, lambda: store.inc_sequence(sid, "view"))
                stalls.append(stall)
                took.append(write)
            else:
                stall, _ = await _locked_window(path, lambda: asyncio.sleep(1.03))
                idle.append(stall)
    return {
        "worst_stall_ms": statistics.median(stalls),
        "worst_stall_ms_rounds": stalls,
        "write_took_ms": statistics.median(took),
        "no_call_stall_ms": statistics.median(idle),
        "no_call_stall_ms_rounds": idle,
    }
