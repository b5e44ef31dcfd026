"""How many accounts this worker holds, by status: `atlas_accounts{status}`.

Counters of accounts opened and closed reset with the process and count a replay's decisions
again; the number of open accounts is a state, so it is read from the state: every
`census_interval_s` the worker scans the accounts table of its active partitions (values only,
yielding to the event loop every thousand rows). Summed over the workers, the gauge is the
cluster's count. No scan runs during a rebalance or before the tables are recovered.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from mode import Service
from prometheus_client import Gauge

from streams.logs import get_logger
from web.metrics import REGISTRY

log = get_logger(__name__)

STATUSES = ("open", "frozen", "closed")

ACCOUNTS = Gauge(
    "atlas_accounts",
    "Accounts in this worker's active partitions, by status (open, frozen, closed).",
    ["status"],
    registry=REGISTRY,
)


async def count_statuses(records: Iterable[Any], chunk: int = 1000) -> Counter[str]:
    """Account records (JSON objects) by status; absent-account records are not accounts."""
    counts: Counter[str] = Counter()
    for i, record in enumerate(records, 1):
        status = record.get("status") if isinstance(record, dict) else None
        if status in STATUSES:
            counts[status] += 1
        if i % chunk == 0:
            await asyncio.sleep(0)
    return counts


class AccountCensus(Service):
    def __init__(
        self,
        records: Callable[[], Iterable[Any]],
        ready: Callable[[], bool],
        interval_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._records, self._ready, self.interval_s = records, ready, interval_s

    @Service.task
    async def _run(self) -> None:
        while not self.should_stop:
            if self._ready():
                await self.count()
            await self.sleep(self.interval_s)

    async def count(self) -> None:
        try:
            counts = await count_statuses(self._records())
        except Exception as exc:  # partitions moving under the scan: next time
            log.debug("account census skipped", error=f"{type(exc).__name__}: {exc}")
            return
        for status in STATUSES:
            ACCOUNTS.labels(status).set(counts[status])
