"""The outbox backlog as every worker sees it: gauges, and the write path's load-shedding signal.

Each worker polls the size of the unpublished outbox and the age of its oldest row (a count
over the small partial index `outbox_unpublished`), and the rows the relay set aside as
unpublishable (`failed_at`), which wait for an operator and are not part of the backlog.
Past `outbox_backlog_limit` rows the write path answers 503 with Retry-After instead of
piling up work the relay cannot ship, which is what happens while Kafka is down or the relay
has no leader.
"""

from __future__ import annotations

import time
from typing import Any

from mode import Service
from prometheus_client import Gauge

from streams.logs import get_logger
from streams.resources import Resources
from streams.settings import Settings
from web.metrics import REGISTRY

log = get_logger(__name__)

BACKLOG = """
SELECT count(*) FILTER (WHERE failed_at IS NULL) AS rows,
       COALESCE(EXTRACT(EPOCH FROM clock_timestamp()
                        - min(created_at) FILTER (WHERE failed_at IS NULL)), 0)::float8 AS oldest_s,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed
FROM outbox WHERE published_at IS NULL
"""

BACKLOG_ROWS = Gauge(
    "atlas_outbox_backlog", "Unpublished outbox rows (polled by every worker).", registry=REGISTRY
)
FAILED_ROWS = Gauge(
    "atlas_outbox_failed_rows",
    "Outbox rows set aside as unpublishable, waiting for an operator (atlas outbox-failed).",
    registry=REGISTRY,
)
OLDEST_AGE = Gauge(
    "atlas_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest unpublished outbox row (polled by every worker).",
    registry=REGISTRY,
)


class OutboxBacklog(Service):
    """Polls the outbox backlog; `over_limit` tells the write path to shed load."""

    def __init__(self, settings: Settings, resources: Resources, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.resources = resources
        self.rows = 0
        self.oldest_s = 0.0
        self.failed = 0  # rows set aside by the relay, not counted in `rows`
        self.measured_at: float | None = None  # monotonic time of the last good reading

    @property
    def over_limit(self) -> bool:
        return self.rows >= self.settings.outbox_backlog_limit

    @Service.task
    async def _poll(self) -> None:
        while not self.should_stop:
            try:
                await self.refresh()
            except Exception as exc:  # PostgreSQL down: the breaker and health say so
                log.debug("outbox backlog not measured", error=f"{type(exc).__name__}: {exc}")
            await self.sleep(self.settings.outbox_backlog_poll_s)

    async def refresh(self) -> None:
        pool = self.resources.pg
        if pool is None:
            return
        timeout = self.settings.postgres_timeout_s

        async def measure() -> Any:
            async with pool.acquire(timeout=timeout) as conn:
                return await conn.fetchrow(BACKLOG, timeout=timeout)

        row = await self.resources.breakers.call("postgres", measure)
        if row is None:
            return
        was_over = self.over_limit
        self.rows, self.oldest_s = int(row["rows"]), max(0.0, float(row["oldest_s"]))
        self.failed = int(row["failed"])
        self.measured_at = time.monotonic()
        BACKLOG_ROWS.set(self.rows)
        FAILED_ROWS.set(self.failed)
        OLDEST_AGE.set(self.oldest_s)
        if self.over_limit != was_over:
            log.warning(
                "outbox backlog limit crossed",
                rows=self.rows,
                limit=self.settings.outbox_backlog_limit,
                shedding=self.over_limit,
            )
