"""Coalescing: concurrent callers share one round trip to a dependency.

A caller's item waits in a queue while up to `concurrency` batches are in flight; each batch
takes everything queued (at most `max_batch`). Under no load an item goes alone, at once (no
timer, no added latency); under load the fixed cost of a round trip (a transaction, a Redis
call) is paid once per batch instead of once per request. Every caller gets its own outcome:
`run` returns one result or exception per item, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Run = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]


class Coalescer(Generic[T, R]):
    def __init__(self, run: Run[T, R], *, max_batch: int, concurrency: int) -> None:
        self._run = run
        self.max_batch, self.concurrency = max_batch, concurrency
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0
        self._drainers: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running < self.concurrency:
            self._running += 1
            drainer = asyncio.ensure_future(self._drain())
            self._drainers.add(drainer)
            drainer.add_done_callback(self._drainers.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                taken = [(item, f) for item, f in taken if not f.done()]  # cancelled callers
                if taken:
                    await self._settle(taken)
        finally:
            self._running -= 1

    async def _settle(self, taken: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._run([item for item, _ in taken])
        except Exception as exc:
            outcomes = [exc] * len(taken)
        for (_, future), outcome in zip(taken, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
