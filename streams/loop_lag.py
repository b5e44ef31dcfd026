"""How late the worker's event loop runs: `atlas_event_loop_lag_seconds`.

A worker's HTTP requests, agent batches and timers share one event loop: whatever holds it (a
large batch folded at once, a full garbage collection, a slow synchronous call) delays every
one of them, and shows first as tail latency. A probe asks to sleep `interval_s` and records
how much later than that it woke up.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mode import Service
from prometheus_client import Histogram

from web.metrics import REGISTRY

LOOP_LAG = Histogram(
    "atlas_event_loop_lag_seconds",
    "How much later than asked the worker's event loop ran a timer (sampled every 0.1 s).",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


async def probe(interval_s: float, observe: Any = LOOP_LAG.observe) -> float:
    """Sleep `interval_s`, record and return how late the loop woke up."""
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await asyncio.sleep(interval_s)
    lag = max(0.0, loop.time() - asked - interval_s)
    observe(lag)
    return lag


class LoopLagProbe(Service):
    def __init__(self, interval_s: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.interval_s = interval_s

    @Service.task
    async def _run(self) -> None:
        while not self.should_stop:
            await probe(self.interval_s)
