"""The asyncio connection budget and watchdog: at most its size lent at once, the
longest waiter served first (never a newcomer), a bounded wait, a task cancelled in
line leaving it, and deadlines kept on one timer of the loop."""

from __future__ import annotations

import asyncio
import random

import pytest

from sauce_sql.backends.postgresql.aio_budget import AsyncBudget
from sauce_sql.backends.postgresql.aio_watchdog import AsyncWatchdog
from sauce_sql.backends.postgresql.budget import BudgetSpent

WAIT = 10.0  # seconds; only reached when something is broken


def later(seconds: float) -> float:
    """A deadline ``seconds`` from now on the running loop's clock."""
    return asyncio.get_running_loop().time() + seconds


async def settle() -> None:
    """Let every ready task run."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_lends_at_most_its_size_then_keeps_them_idle() -> None:
    """Within its size each taker may open a connection (None); given back, they are
    kept idle up to keep_idle and lent again, most recent first, without awaiting;
    past it, returned for closing."""

    async def main() -> None:
        budget: AsyncBudget[str] = AsyncBudget(3, keep_idle=2)
        assert [await budget.take(later(WAIT)) for _ in range(3)] == [None, None, None]
        with pytest.raises(BudgetSpent):
            await budget.take(later(0.01))
        assert budget.give_back("a") is None
        assert budget.give_back("b") is None
        assert budget.give_back("c") == "c"  # beyond keep_idle: the caller closes it
        assert budget.take_idle() == "b"
        assert budget.take_idle() == "a"
        assert budget.take_idle() is None
        assert await budget.take(later(WAIT)) is None  # the closed one's place
        budget.give_back("d")
        assert budget.drain() == ["d"]

    asyncio.run(main())


def test_the_longest_waiter_is_served_first_and_before_newcomers() -> None:
    """Waiters get connections in the order they came; a task arriving as one is
    given back finds nothing idle and queues behind them."""

    async def main() -> None:
        budget: AsyncBudget[str] = AsyncBudget(1, keep_idle=1)
        assert await budget.take(later(WAIT)) is None
        served: list[tuple[int, str | None]] = []

        async def wait(n: int) -> None:
            served.append((n, await budget.take(later(WAIT))))

        tasks = []
        for n in range(5):
            tasks.append(asyncio.create_task(wait(n)))
            await settle()
        assert budget.waiting == 5
        for n in range(5):
            budget.give_back(f"c{n}")
            assert budget.take_idle() is None  # handed over, not left for a newcomer
            await settle()
        await asyncio.gather(*tasks)
        assert served == [(n, f"c{n}") for n in range(5)]

    asyncio.run(main())


def test_a_waiter_gives_up_at_its_deadline() -> None:
    """A waiter that gets nothing by its deadline raises BudgetSpent and leaves the
    line; the next connection given back stays idle."""

    async def main() -> None:
        budget: AsyncBudget[str] = AsyncBudget(1, keep_idle=1)
        await budget.take(later(WAIT))
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(BudgetSpent):
            await budget.take(later(0.2))
        assert 0.2 <= loop.time() - began < WAIT
        assert budget.waiting == 0
        assert budget.give_back("a") is None
        assert budget.take_idle() == "a"

    asyncio.run(main())


def test_a_task_cancelled_in_line_leaves_it_and_passes_on_what_it_was_handed() -> None:
    """A task cancelled while it waits leaves the line; one cancelled just after it was
    handed a connection passes the connection on to the next waiter."""

    async def main() -> None:
        budget: AsyncBudget[str] = AsyncBudget(1, keep_idle=1)
        await budget.take(later(WAIT))
        first = asyncio.create_task(budget.take(later(WAIT)))
        await settle()
        first.cancel()
        await settle()
        assert budget.waiting == 0
        handed = asyncio.create_task(budget.take(later(WAIT)))
        behind = asyncio.create_task(budget.take(later(WAIT)))
        await settle()
        budget.give_back("a")  # to ``handed``, which is cancelled before it runs
        handed.cancel()
        assert await behind == "a"
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert first.cancelled()

    asyncio.run(main())


@pytest.mark.parametrize("keep_idle", [4, 2])
def test_many_tasks_never_hold_more_than_its_size(keep_idle: int) -> None:
    """64 tasks taking and giving back connections of a budget of 4 (opening one when
    given None, closing what it returns), some cancelled on the way: never more than
    4 out at once, and nothing lost or left counted once they stop."""

    async def main() -> None:
        budget: AsyncBudget[object] = AsyncBudget(4, keep_idle=keep_idle)
        out = [0, 0]  # lent now, most ever
        rng = random.Random(7)

        async def work() -> None:
            for _ in range(100):
                item = budget.take_idle()
                if item is None:
                    item = await budget.take(later(WAIT))
                if item is None:
                    item = object()
                out[0] += 1
                out[1] = max(out)
                try:
                    await asyncio.sleep(0)
                finally:
                    out[0] -= 1
                    budget.give_back(None if rng.random() < 0.1 else item)

        tasks = [asyncio.create_task(work()) for _ in range(64)]
        await settle()
        for task in tasks[::8]:
            task.cancel()  # waiting in line, most of them
        await asyncio.gather(*tasks, return_exceptions=True)
        assert out[1] <= 4
        assert budget.waiting == 0
        for _ in range(4):  # every place is free again
            assert budget.take_idle() is not None or await budget.take(later(0.1)) is None

    asyncio.run(main())


def test_the_watchdog_calls_due_at_each_deadline_but_for_forgotten_keys() -> None:
    """Keys watched with deadlines in any order are each due once their deadline has
    passed, in one timer of the loop; a forgotten key never is."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        due: list[tuple[str, float]] = []
        watchdog: AsyncWatchdog[str] = AsyncWatchdog(lambda key: due.append((key, loop.time())))
        deadlines = {"c": later(0.15), "a": later(0.05), "b": later(0.1), "gone": later(0.07)}
        for key, deadline in deadlines.items():
            watchdog.watch(key, deadline)
        watchdog.forget("gone")
        await asyncio.sleep(0.3)
        assert [key for key, _ in due] == ["a", "b", "c"]
        for key, at in due:
            assert at >= deadlines[key]
        assert len(watchdog) == 0
        watchdog.stop()

    asyncio.run(main())
