"""PriorityLock: mutual exclusion, urgent waiters before ordinary ones, FIFO within each
class, and a cancelled waiter neither takes nor leaks the lock."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from prsm_node.priority_lock import PriorityLock


async def _take(lock: PriorityLock, name: str, urgent: bool, order: list[str]) -> None:
    async with lock.hold(urgent=urgent):
        order.append(name)
        await trio.sleep(0)  # hold it across a checkpoint: nobody else may enter


async def test_urgent_waiters_go_before_ordinary_ones_that_came_first() -> None:
    lock, order = PriorityLock(), []
    arrivals = [("ordinary-1", False), ("ordinary-2", False),
                ("urgent-1", True), ("urgent-2", True)]
    async with trio.open_nursery() as nursery, lock.hold(urgent=False):
        for name, urgent in arrivals:  # one at a time: trio may start a batch in any order
            nursery.start_soon(_take, lock, name, urgent, order)
            await trio.testing.wait_all_tasks_blocked()
        assert lock.waiting() == (2, 2)
    assert order == ["urgent-1", "urgent-2", "ordinary-1", "ordinary-2"]
    assert not lock.locked()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_any_mix_is_exclusive_and_ordered_by_class_then_arrival(urgencies: list[bool]) -> None:
    order: list[str] = []
    inside = 0

    async def take(number: int, urgent: bool) -> None:
        nonlocal inside
        async with lock.hold(urgent=urgent):
            inside += 1
            assert inside == 1
            order.append(f"{'u' if urgent else 'o'}{number}")
            await trio.sleep(0)
            inside -= 1

    async def main() -> None:
        async with trio.open_nursery() as nursery, lock.hold(urgent=True):
            for number, urgent in enumerate(urgencies):
                nursery.start_soon(take, number, urgent)
                await trio.testing.wait_all_tasks_blocked()

    lock = PriorityLock()
    trio.run(main)
    urgent = [f"u{n}" for n, u in enumerate(urgencies) if u]
    ordinary = [f"o{n}" for n, u in enumerate(urgencies) if not u]
    assert order == urgent + ordinary
    assert not lock.locked()


async def test_a_cancelled_waiter_does_not_keep_the_lock() -> None:
    lock, order = PriorityLock(), []
    waiter = trio.CancelScope()

    async def cancelled_waiter() -> None:
        with waiter:
            await _take(lock, "cancelled", True, order)

    async with trio.open_nursery() as nursery, lock.hold(urgent=False):
        nursery.start_soon(_take, lock, "later", False, order)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(cancelled_waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert lock.waiting() == (1, 1)
        waiter.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert lock.waiting() == (0, 1)
    assert order == ["later"]
    assert not lock.locked()


async def test_an_error_inside_releases_the_lock() -> None:
    lock = PriorityLock()
    with pytest.raises(RuntimeError):
        async with lock.hold(urgent=True):
            raise RuntimeError("boom")
    assert not lock.locked()
    async with lock.hold(urgent=False):
        assert lock.locked()
