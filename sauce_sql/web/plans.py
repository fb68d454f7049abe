"""What a visit asks of the store, written once as plans that a sync and an async
runner drive (the shape of psycopg's generators): a plan yields the store call it needs
and receives its result, or has ``SessionNotFound`` or ``SessionExists`` thrown in.

The runners fail open: a store that cannot be used is logged once when it goes and once
when it comes back, counted in between, and not even asked for ``retry_after`` seconds
(doubling up to 30 s) after each failure, so a database that hangs does not hold every
request's worker; tracking resumes by itself on the first success.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Generator
from typing import Any, TypeVar

from sauce_sql.errors import SauceSQLError, SessionExists, SessionNotFound, StoreUnavailable
from sauce_sql.models import AnalyticsSession, SequenceType
from sauce_sql.web.core import Visit
from sauce_sql.web.stats import WebStats

__all__ = ["Guard", "Plan", "count", "counted", "finish", "run", "run_async"]

T = TypeVar("T")
Call = tuple[str, tuple[Any, ...], dict[str, Any]]
Plan = Generator[Call, Any, T]

logger = logging.getLogger("sauce_sql.web")
_MAX_BACKOFF = 30.0


def _ensure(visit: Visit, user_id: str | None = None) -> Plan[AnalyticsSession | None]:
    """Make the visitor's session live. A new visitor's id was minted here, so its
    session is one insert (a request of the same visitor that raced ahead may have made
    it: then it is there, as wanted, and None is returned). A cookie's session is
    revived under its id with the current user agent and client IP, or found live and
    left as it is."""
    revive = visit.revive(user_id)
    session: AnalyticsSession | None = None
    if visit.cookie is None:
        options = {"user_agent": revive.user_agent, "client_ip": revive.client_ip}
        with contextlib.suppress(SessionExists):
            session = yield ("new_session", (revive.session_id,), {**options, "user_id": user_id})
    else:
        session = yield ("maybe_revive_session", (revive,), {})
    visit.ensured = True
    return session


def count(visit: Visit, kind: SequenceType) -> Plan[int]:
    """Add one to the visitor's ``kind`` counter, creating or reviving its session first
    if need be; a returning visitor whose session is live costs one statement."""
    assert visit.session_id is not None
    if not visit.ensured and visit.cookie is None:
        yield from _ensure(visit)
    try:
        value: int = yield ("inc_sequence", (visit.session_id, kind), {})
    except SessionNotFound:
        yield from _ensure(visit)
        value = yield ("inc_sequence", (visit.session_id, kind), {})
    visit.ensured = True
    return value


def counted(visit: Visit, kind: SequenceType, value: int | None) -> int:
    """What a tracker's ``track_event()`` / ``track_visit()`` returns once its
    :func:`count` plan has run (``value``, None if the store could not be used): the new
    sequence, or 0; the visit's tally is kept for the middleware's counts."""
    if value is None:
        return 0
    if kind is SequenceType.VIEW:
        visit.views += 1
    else:
        visit.events += 1
    return value


def _identify(visit: Visit, user_id: str | None) -> Plan[None]:
    assert visit.session_id is not None
    if not visit.ensured:
        if visit.cookie is not None:
            try:
                yield ("assign_user", (visit.session_id, user_id), {})
                visit.ensured = True
                return
            except SessionNotFound:
                pass
        session = yield from _ensure(visit, user_id)
        if session is not None and session.user_id == user_id:
            return
    yield ("assign_user", (visit.session_id, user_id), {})


def finish(visit: Visit) -> Plan[None]:
    """After the response: count the page view and store the identified user, if due."""
    if visit.view_due:
        visit.view_due = False
        yield from count(visit, SequenceType.VIEW)
        visit.views += 1
    user = visit.user
    if isinstance(user, str) or user is None:
        yield from _identify(visit, user)


def _drive_sync(store: Any, plan: Plan[T]) -> T:
    try:
        call = next(plan)
        while True:
            name, args, kwargs = call
            try:
                result = getattr(store, name)(*args, **kwargs)
            except (SessionNotFound, SessionExists) as exc:
                call = plan.throw(exc)
            else:
                call = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def _drive_async(store: Any, plan: Plan[T]) -> T:
    try:
        call = next(plan)
        while True:
            name, args, kwargs = call
            try:
                result = await getattr(store, name)(*args, **kwargs)
            except (SessionNotFound, SessionExists) as exc:
                call = plan.throw(exc)
            else:
                call = plan.send(result)
    except StopIteration as stop:
        value: T = stop.value
        return value


class Guard:
    """The middleware's watch over its store: started once, failures logged and backed off."""

    def __init__(self, stats: WebStats, retry_after: float) -> None:
        self.stats = stats
        self.started = False
        self._retry_after = retry_after
        self._backoff = retry_after
        self._resume_at = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether to ask the store now (False while backing off after a failure)."""
        if self.stats.available or time.monotonic() >= self._resume_at:
            return True
        with self._lock:
            self.stats.dropped += 1
        return False

    def drop(self) -> None:
        """Count a tracking attempt not made (the store is not asked)."""
        with self._lock:
            self.stats.dropped += 1

    def succeeded(self) -> None:
        """A store call worked: tracking is back if it was gone."""
        if not self.stats.available:
            with self._lock:
                if self.stats.available:
                    return
                self.stats.available = True
                self._backoff = self._retry_after
                failures = self.stats.failures
            logger.warning("sauce_sql: the analytics store is back (%d failures so far)", failures)

    def failed(self, exc: SauceSQLError) -> None:
        """A store call failed: log the first failure of an outage, count the others."""
        with self._lock:
            self.stats.failures += 1
            first = self.stats.available
            if isinstance(exc, StoreUnavailable):
                self.stats.available = False
                self._resume_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        if first:
            logger.warning(
                "sauce_sql: page views are not tracked, pages are served as usual: %s",
                exc,
                exc_info=exc,
            )


def run(guard: Guard, store: Any, plan: Plan[T]) -> T | None:
    """Drive ``plan`` on a sync ``Store``; None if the store could not be used."""
    if not guard.allow():
        plan.close()
        return None
    try:
        if not guard.started:
            store.start()
            guard.started = True
        result = _drive_sync(store, plan)
    except SauceSQLError as exc:
        guard.failed(exc)
        return None
    guard.succeeded()
    return result


async def run_async(guard: Guard, store: Any, plan: Plan[T]) -> T | None:
    """Drive ``plan`` on an ``AsyncStore``; None if the store could not be used."""
    if not guard.allow():
        plan.close()
        return None
    try:
        if not guard.started:
            await store.start()
            guard.started = True
        result = await _drive_async(store, plan)
    except SauceSQLError as exc:
        guard.failed(exc)
        return None
    guard.succeeded()
    return result
