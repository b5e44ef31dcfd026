"""The composition root's clients: PostgreSQL pool, Redis client and a Kafka metadata client.

Built when the worker starts and closed when it stops, never at import time. None of them
connects eagerly: a dependency that is down at start-up shows in health instead of stopping the
worker, and every client reconnects on its own when the dependency returns.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiokafka.client import AIOKafkaClient
from mode import Service
from redis.asyncio import Redis

from streams.logs import get_logger
from streams.resilience import Breakers
from streams.settings import Settings

log = get_logger(__name__)


class Resources(Service):
    """Owns the clients every other part of the worker borrows."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.pg: asyncpg.Pool | None = None
        self.redis: Redis | None = None
        self.kafka: AIOKafkaClient | None = None
        self._kafka_bootstrapped = False
        self.breakers = Breakers(settings.breaker_threshold, settings.breaker_reset_s)

    async def on_start(self) -> None:
        s = self.settings
        await self.breakers.start()
        self.pg = await asyncpg.create_pool(
            dsn=s.database_url.get_secret_value(),
            min_size=s.postgres_pool_min,
            max_size=s.postgres_pool_max,
            timeout=s.postgres_timeout_s,
            command_timeout=s.postgres_timeout_s,
        )
        self.redis = Redis.from_url(
            s.redis_url.get_secret_value(),
            socket_timeout=s.redis_timeout_s,
            socket_connect_timeout=s.redis_timeout_s,
            health_check_interval=5,
        )
        self.kafka = AIOKafkaClient(
            bootstrap_servers=s.kafka_bootstrap_servers,
            request_timeout_ms=int(s.kafka_timeout_s * 1000),
            client_id=f"{s.app_name}-health",
        )
        log.info("resources started")

    async def kafka_metadata(self) -> int:
        """Ask the cluster for metadata; return the number of brokers that answered."""
        assert self.kafka is not None, "resources not started"
        if not self._kafka_bootstrapped:
            await self.kafka.bootstrap()
            self._kafka_bootstrapped = True
        metadata = await self.kafka.fetch_all_metadata()
        return len(metadata.brokers())

    async def on_stop(self) -> None:
        timeout = self.settings.postgres_timeout_s
        if self.pg is not None:
            try:
                await asyncio.wait_for(self.pg.close(), timeout)
            except TimeoutError:
                self.pg.terminate()
        if self.redis is not None:
            await self.redis.aclose()
        if self.kafka is not None:
            await self.kafka.close()
        log.info("resources stopped")
