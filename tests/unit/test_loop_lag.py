"""The event loop lag probe: a blocked loop shows as lag, an idle one does not."""

from __future__ import annotations

import asyncio
import time

from streams.loop_lag import probe


async def test_an_idle_loop_is_on_time() -> None:
    seen: list[float] = []
    lag = await probe(0.01, seen.append)
    assert seen == [lag] and lag < 0.05


async def test_a_blocked_loop_is_late_by_the_block() -> None:
    async def hog() -> None:
        await asyncio.sleep(0.001)
        time.sleep(0.2)  # noqa: ASYNC251 - holds the loop, as a slow synchronous call would

    seen: list[float] = []
    await asyncio.gather(probe(0.01, seen.append), hog())
    assert 0.15 < seen[0] < 1.0
