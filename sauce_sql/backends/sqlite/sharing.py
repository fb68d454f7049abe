"""One executor per SQLite file in a process, shared by the stores on it.

Stores on one file (two tables, say) that each had their writers queue on their own
connection would meet again in SQLite's sleeping busy handler, with calls of up to a
second or more while the other store's writer held the lock. So stores that reach one
file through engines of their own share one executor (its writer connection, its line
or write queue, its checkpoint thread), counted by its users and closed by the last.
An application's own engine (``Store(engine=...)``) keeps an executor of its own: its
connections may carry the application's own setup.
"""

from __future__ import annotations

import os
import threading

from sqlalchemy import Engine

from sauce_sql.backends.sqlite import lease
from sauce_sql.backends.sqlite.executor import SQLiteExecutor
from sauce_sql.engine import is_memory

__all__ = ["acquire", "release"]

_lock = threading.Lock()
_shared: dict[tuple[str, str], SQLiteExecutor] = {}
_users: dict[SQLiteExecutor, int] = {}
_keys: dict[SQLiteExecutor, tuple[str, str]] = {}


def _file_key(engine: Engine, durability: str) -> tuple[str, str] | None:
    url = engine.url
    if url.get_backend_name() != "sqlite" or is_memory(url) or "uri" in url.query:
        return None
    # One file however it is named: relative, absolute, through a link.
    return os.path.realpath(url.database or ""), durability


def acquire(engine: Engine, *, shareable: bool, durability: str, describe: str) -> SQLiteExecutor:
    """The executor for a store on ``engine``: the file's shared one when ``shareable``."""
    key = _file_key(engine, durability) if shareable else None
    if key is None:
        executor = SQLiteExecutor(engine, durability=durability, describe=describe)
    else:
        with _lock:
            found = _shared.get(key)
            if found is None:
                found = SQLiteExecutor(engine, durability=durability, describe=describe)
                _shared[key], _keys[found], _users[found] = found, key, 0
            _users[found] += 1
            executor = found
    if executor.database is not None:
        # Each store says it is there, for other processes' cleanups (see lease.py).
        lease.enter(executor.database)
    return executor


def release(executor: SQLiteExecutor) -> None:
    """A store is done with ``executor``; the last user of a shared one closes it."""
    if executor.database is not None:
        lease.leave(executor.database)
    with _lock:
        users = _users.get(executor)
        if users is not None:
            if users > 1:
                _users[executor] = users - 1
                return
            del _users[executor]
            del _shared[_keys.pop(executor)]
    executor.close()
