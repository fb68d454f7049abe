"""What the middleware has tracked and skipped, counted across threads and tasks."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sauce_sql.web.rules import Skip

__all__ = ["WebState", "WebStats"]


@dataclass(frozen=True)
class WebState:
    """What the middleware has done since it was built (``middleware.get_state()``).

    ``skipped`` counts requests per :class:`Skip` reason; ``store_failures`` the
    tracking attempts the store refused, ``dropped`` those not tried because it was
    down; ``store_available`` is False from a failure until the next success.
    """

    views: int
    events: int
    skipped: Mapping[str, int]
    store_failures: int
    dropped: int
    store_available: bool


class WebStats:
    """Thread-safe counters behind :class:`WebState`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._skipped: Counter[Skip] = Counter()
        self.views = self.events = self.failures = self.dropped = 0
        self.available = True

    def skip(self, reason: Skip) -> None:
        """Count a request skipped for ``reason``."""
        with self._lock:
            self._skipped[reason] += 1

    def add(self, *, views: int = 0, events: int = 0) -> None:
        """Count what a request tracked."""
        with self._lock:
            self.views += views
            self.events += events

    def snapshot(self) -> WebState:
        """The counts now."""
        with self._lock:
            skipped = MappingProxyType({str(k): n for k, n in self._skipped.items()})
            return WebState(
                self.views, self.events, skipped, self.failures, self.dropped, self.available
            )
