"""The cleanup lease of a SQLite file (sauce_sql/backends/sqlite/lease.py): one round
at a time across processes, let go when its holder ends however it ends, never kept by
a child forked mid-round; and each process's presence, which makes a cleanup leave
the write lock free between batches only when another process is there.

The writers' bound behind cleaners of other processes is checked under load in
test_cleanup_load.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _support import FAR_FUTURE

from sauce_sql import AsyncStore, Store
from sauce_sql.backends.sqlite.lease import cleanup_lease, others_present

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

HOLD = """
import sys, time
from sauce_sql.backends.sqlite.lease import cleanup_lease
with cleanup_lease(sys.argv[1], wait=None) as ours:
    print("taken" if ours else "refused", flush=True)
    time.sleep(60)
"""


def in_child(check: Callable[[], bool]) -> int:
    """Fork; the child calls ``check`` and exits 0 if it returns True."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_one_round_at_a_time_and_let_go_when_its_process_is_killed(tmp_path: Path) -> None:
    """Another process's round refuses this one's, a called cleanup waits at most its
    bound and then cleans, and a SIGKILLed holder lets the lease go."""
    database = str(tmp_path / "sessions.db")
    Store(f"sqlite:///{database}", clean_interval=None).start().close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, database], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "taken"
        with cleanup_lease(database, wait=None) as ours:
            assert not ours
        began = time.monotonic()
        with cleanup_lease(database, wait=0.3) as ours:
            assert ours  # a called cleanup cleans anyway, after its bound
        assert 0.3 <= time.monotonic() - began < 2
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        with cleanup_lease(database, wait=None) as ours:
            assert ours
    finally:
        holder.kill()
        holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_child_forked_mid_round_neither_keeps_nor_shares_the_lease(tmp_path: Path) -> None:
    """A child forked while its parent holds the lease cannot take it (the parent's
    round goes on), sees its parent present; once the parent's round ends, a child
    forked then takes it, and the parent sees a live child's store as present."""
    database = str(tmp_path / "sessions.db")
    with Store(f"sqlite:///{database}", clean_interval=None):
        assert not others_present(database)
        with cleanup_lease(database, wait=None) as ours:
            assert ours
            assert in_child(lambda: not cleanup_lease(database, wait=None).__enter__()) == 0
            assert in_child(lambda: others_present(database)) == 0
        assert in_child(lambda: cleanup_lease(database, wait=None).__enter__()) == 0
        with cleanup_lease(database, wait=None) as ours:
            assert ours  # nothing a child did kept it
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: its inherited store is there
            time.sleep(5)
            os._exit(0)
        try:
            deadline = time.monotonic() + 5
            while not others_present(database) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert others_present(database)
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert not others_present(database)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_called_cleanup_waits_for_another_process_round_at_most_its_timeout(
    tmp_path: Path, kind: str
) -> None:
    """While another process holds the lease, a called cleanup() of Store or
    AsyncStore waits for it up to the store's timeout, then cleans anyway."""
    database = str(tmp_path / "sessions.db")
    url = f"sqlite:///{database}"
    Store(url, clean_interval=None).start().close()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, database], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "taken"
        began = time.monotonic()
        if kind == "sync":
            with Store(url, clean_interval=None, timeout=0.5) as store:
                store.new_session("s")
                assert store.cleanup(FAR_FUTURE) == 1
        else:

            async def clean() -> int:
                async with AsyncStore(url, clean_interval=None, timeout=0.5) as store:
                    await store.new_session("s")
                    return await store.cleanup(FAR_FUTURE)

            assert asyncio.run(clean()) == 1
        assert 0.5 <= time.monotonic() - began < 5
    finally:
        holder.kill()
        holder.wait(30)
        if holder.stdout is not None:
            holder.stdout.close()
