"""A synchronous face on an AsyncStore, so the behaviour suite runs on both stores.

Every operation is sent to an event loop running in a thread of its own and waited
for; what the caller sees is what the coroutine returned or raised.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from sauce_sql import AsyncStore

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread until closed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncAsyncStore:
    """An AsyncStore with Store's synchronous methods (for tests only)."""

    def __init__(self, store: AsyncStore, loop: LoopThread) -> None:
        self.store = store
        self._loop = loop

    @property
    def engine(self) -> Any:
        """The store's engine."""
        return self.store.engine

    @property
    def _executor(self) -> Any:
        return self.store._executor

    def start(self) -> SyncAsyncStore:
        """Start the store."""
        self._loop.run(self.store.start())
        return self

    def close(self) -> None:
        """Close the store."""
        self._loop.run(self.store.close())

    def __enter__(self) -> SyncAsyncStore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        # Every other name is the AsyncStore's: its coroutines run on the loop and are
        # waited for, so that no operation needs a copy here.
        attribute = getattr(self.store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(attribute(*args, **kwargs))

        return call
