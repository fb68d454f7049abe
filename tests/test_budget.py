"""The connection budget: at most its size lent at once, the longest waiter served first,
a bounded wait, and a waiter interrupted in line leaving it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from _support import alarm, wait_for

from sauce_sql.backends.postgresql.budget import BudgetSpent, ConnectionBudget

WAIT = 10.0  # seconds; only reached when something is broken


class Interrupted(Exception):
    """What the test's SIGALRM handler raises."""


def test_lends_at_most_its_size_then_keeps_them_idle() -> None:
    """Within its size each taker may open a connection (None); given back, they are
    kept idle up to keep_idle and lent again, most recent first; past it, returned
    for closing."""
    budget: ConnectionBudget[str] = ConnectionBudget(3, keep_idle=2)
    assert [budget.take(0) for _ in range(3)] == [None, None, None]
    with pytest.raises(BudgetSpent):
        budget.take(0)
    assert budget.give_back("a") is None
    assert budget.give_back("b") is None
    assert budget.give_back("c") == "c"  # beyond keep_idle: the caller closes it
    assert budget.take(0) == "b"
    assert budget.take(0) == "a"
    assert budget.take(0) is None  # the closed one's place
    budget.give_back(None)
    assert budget.take(0) is None
    budget.give_back("d")
    assert budget.drain() == ["d"]


def test_the_longest_waiter_is_served_first() -> None:
    """Waiters get connections in the order they came, however many others ask
    meanwhile."""
    budget: ConnectionBudget[str] = ConnectionBudget(1, keep_idle=1)
    assert budget.take(0) is None
    served: list[tuple[int, str | None]] = []

    def wait(n: int) -> None:
        served.append((n, budget.take(WAIT)))

    def in_line(count: int) -> Callable[[], bool]:
        return lambda: budget.waiting == count

    def served_so_far(count: int) -> Callable[[], bool]:
        return lambda: len(served) == count

    threads = []
    for n in range(5):
        thread = threading.Thread(target=wait, args=(n,))
        thread.start()
        threads.append(thread)
        wait_for(in_line(n + 1), WAIT, f"waiter {n} in line")
    for n in range(5):
        budget.give_back(f"c{n}")
        wait_for(served_so_far(n + 1), WAIT, f"waiter {n} served")
    for thread in threads:
        thread.join(WAIT)
    assert served == [(n, f"c{n}") for n in range(5)]


def test_a_waiter_gives_up_after_its_timeout() -> None:
    """A waiter that gets nothing within its timeout raises BudgetSpent and leaves the
    line; the next connection given back goes to the next waiter or stays idle."""
    budget: ConnectionBudget[str] = ConnectionBudget(1, keep_idle=1)
    budget.take(0)
    began = time.monotonic()
    with pytest.raises(BudgetSpent):
        budget.take(0.2)
    assert 0.2 <= time.monotonic() - began < WAIT
    assert budget.waiting == 0
    assert budget.give_back("a") is None
    assert budget.take(0) == "a"


def test_a_waiter_interrupted_in_line_leaves_it() -> None:
    """An exception raised by a signal handler while the main thread waits in line
    leaves the line, so the connection given back next goes to a waiter still there."""
    budget: ConnectionBudget[str] = ConnectionBudget(1, keep_idle=1)
    budget.take(0)
    with pytest.raises(Interrupted), alarm(0.2, Interrupted):
        budget.take(WAIT)
    assert budget.waiting == 0
    got: list[str | None] = []
    other = threading.Thread(target=lambda: got.append(budget.take(WAIT)))
    other.start()
    wait_for(lambda: budget.waiting == 1, WAIT, "the other waiter in line")
    budget.give_back("a")
    other.join(WAIT)
    assert got == ["a"]


@pytest.mark.parametrize("keep_idle", [4, 2])
def test_many_threads_never_hold_more_than_its_size(keep_idle: int) -> None:
    """32 threads taking and giving back connections of a budget of 4 (opening one
    when given None, closing what it returns): never more than 4 out at once, every
    take served, and nothing lost or left counted once they stop."""
    budget: ConnectionBudget[object] = ConnectionBudget(4, keep_idle=keep_idle)
    guard = threading.Lock()
    out = [0, 0]  # lent now, most ever
    opened: list[object] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(500):
                item = budget.take(WAIT)
                if item is None:
                    item = object()
                    opened.append(item)
                with guard:
                    out[0] += 1
                    out[1] = max(out[1], out[0])
                time.sleep(0)  # let the others run while this one holds it
                with guard:
                    out[0] -= 1
                budget.give_back(item)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 3)
    assert errors == []
    assert out == [0, 4]
    assert budget.waiting == 0
    idle = budget.drain()
    assert len(idle) <= keep_idle
    assert budget._counted == 0
    assert len(opened) >= 4
