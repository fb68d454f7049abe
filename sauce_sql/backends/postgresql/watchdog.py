"""A deadline for every call on a server connection, kept by one thread per store.

A server process that stops answering (frozen, or stuck on a hung disk) holds a call
for as long as it is silent: it ignores cancel requests, and its kernel still
acknowledges every packet, so neither TCP keepalives nor a TCP user timeout fire. So
the client keeps the deadline itself. A call marks its connection with its deadline as
it starts and clears the mark as it ends, one attribute store each; the watchdog
thread reads the marks, sleeping until the earliest, and shuts the socket of a call
past its deadline down, so that the driver waiting on it fails at once with a
connection error. The connection is marked timed out first: the call then reports the
timeout, and the connection is closed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Protocol

__all__ = ["Watchdog", "Watched"]

logger = logging.getLogger("sauce_sql.watchdog")

#: The shortest sleep between looks: a smaller timeout is kept to within this.
MIN_TICK = 0.01


class Watched(Protocol):
    """A connection the watchdog keeps an eye on."""

    #: When the call in flight must end (``time.monotonic()``); 0.0 when none is.
    deadline: float
    #: Set by the watchdog when it ended a call.
    timed_out: bool
    #: A duplicate of the connection's socket descriptor, its owner's to close once
    #: the watchdog has forgotten it (so it never names another file meanwhile).
    fd: int


class Watchdog:
    """Ends calls that run past their deadline; its thread starts on the first watch."""

    def __init__(self, *, timeout: float, name: str) -> None:
        # A call's deadline is at most ``timeout`` away when it starts, so looking
        # that often sees every call before it is due.
        self._tick = max(timeout, MIN_TICK)
        self._name = name
        self._lock = threading.Lock()
        self._watched: set[Watched] = set()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, call: Watched) -> None:
        """Keep an eye on ``call``'s deadline until :meth:`forget`."""
        with self._lock:
            self._watched.add(call)
            if self._thread is None and not self._stopping.is_set():
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                try:
                    thread.start()
                except RuntimeError:  # no new thread (at interpreter exit, say)
                    logger.warning("no watchdog thread: calls to the server are not bounded")
                    return
                self._thread = thread

    def forget(self, call: Watched) -> None:
        """Stop watching ``call``; once this returns its socket is never touched."""
        with self._lock:
            self._watched.discard(call)

    def stop(self) -> None:
        """Stop the thread once the calls in flight have ended or passed their deadline."""
        self._stopping.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = self._sweep(now)
            if due is None and self._stopping.is_set():
                return
            wait = self._tick if due is None else min(self._tick, due - now)
            if self._stopping.is_set():
                # Still watching the calls in flight: their deadlines hold after close().
                time.sleep(max(wait, 0.0))
            else:
                self._stopping.wait(wait)

    def _sweep(self, now: float) -> float | None:
        """End the calls past their deadline; return the next deadline, if any."""
        with self._lock:
            watched = list(self._watched)
        earliest: float | None = None
        for call in watched:
            due = call.deadline
            if not due or call.timed_out:
                continue
            if due <= now:
                self._end(call, due)
            elif earliest is None or due < earliest:
                earliest = due
        return earliest

    def _end(self, call: Watched, due: float) -> None:
        with self._lock:
            # The call may have ended since the sweep read its mark, and its connection
            # been closed or lent to the next call: end only that same call.
            if call not in self._watched or call.deadline != due:
                return
            call.timed_out = True
            with contextlib.suppress(OSError):  # already shut down, or closed by the server
                sock = socket.socket(fileno=call.fd)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.detach()
