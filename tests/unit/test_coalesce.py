from __future__ import annotations

import asyncio

import pytest

from web.coalesce import Coalescer


class Recorder:
    """A dependency that records the batches it is called with and answers each item."""

    def __init__(self, fail_items: frozenset[int] = frozenset(), down: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail_items, self.down = fail_items, down
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if self.down:
                raise ConnectionError("down")
            return [ValueError(i) if i in self.fail_items else i * 10 for i in items]
        finally:
            self.in_flight -= 1


async def test_a_lone_item_goes_at_once_and_alone() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=8, concurrency=1)
    assert await coalescer.submit(3) == 30
    assert run.batches == [[3]]


async def test_concurrent_items_share_batches_and_each_gets_its_own_answer() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=8, concurrency=1)
    answers = await asyncio.gather(*(coalescer.submit(i) for i in range(20)))
    assert answers == [i * 10 for i in range(20)]
    # Submitted in one tick: batches of at most 8, in order, one at a time.
    assert run.batches == [list(range(8)), list(range(8, 16)), list(range(16, 20))]
    assert run.most_in_flight == 1


async def test_concurrency_bounds_the_batches_in_flight() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=4, concurrency=3)
    await asyncio.gather(*(coalescer.submit(i) for i in range(40)))
    assert run.most_in_flight == 3


async def test_failures_reach_only_their_own_callers() -> None:
    coalescer = Coalescer(Recorder(fail_items=frozenset({2})), max_batch=8, concurrency=1)
    answers = await asyncio.gather(*(coalescer.submit(i) for i in range(4)), return_exceptions=True)
    assert answers[:2] == [0, 10] and answers[3] == 30
    assert isinstance(answers[2], ValueError)


async def test_a_failed_batch_fails_each_of_its_callers() -> None:
    coalescer = Coalescer(Recorder(down=True), max_batch=8, concurrency=1)
    answers = await asyncio.gather(*(coalescer.submit(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(a, ConnectionError) for a in answers)


async def test_a_cancelled_caller_is_left_out_of_the_next_batch() -> None:
    run = Recorder()
    coalescer = Coalescer(run, max_batch=8, concurrency=1)
    first = asyncio.ensure_future(coalescer.submit(1))
    await asyncio.sleep(0)  # 1 is in flight
    gone = asyncio.ensure_future(coalescer.submit(2))
    kept = asyncio.ensure_future(coalescer.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    assert await first == 10 and await kept == 30
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert run.batches == [[1], [3]]
