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
from prometheus_client import Gauge, Histogram
from redis.asyncio import Redis

from streams.kafka_metadata import OFFSETS_TOPIC, brokers, track_existing, unready
from streams.logs import get_logger
from streams.resilience import Breakers
from streams.settings import Settings
from web.idempotency import pool_settings
from web.metrics import REGISTRY

log = get_logger(__name__)


PG_POOL_SIZE = Gauge(
    "atlas_pg_pool_size", "Connections the PostgreSQL pool holds.", registry=REGISTRY
)
PG_POOL_IN_USE = Gauge(
    "atlas_pg_pool_in_use", "PostgreSQL pool connections lent out.", registry=REGISTRY
)
PG_POOL_MAX = Gauge("atlas_pg_pool_max", "The PostgreSQL pool's size limit.", registry=REGISTRY)
PG_QUERY_DURATION = Histogram(
    "atlas_pg_query_duration_seconds",
    "PostgreSQL statement duration, by its first keyword (select, insert, ...) and outcome.",
    ["statement", "outcome"],
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_STATEMENTS = frozenset(
    {"select", "insert", "update", "delete", "with", "set", "begin", "commit", "rollback"}
)


def _log_query(record: Any) -> None:
    words = record.query.lstrip().split(None, 1)
    statement = words[0].lower() if words else "other"
    if statement not in _STATEMENTS:
        statement = "other"
    outcome = "error" if record.exception is not None else "ok"
    PG_QUERY_DURATION.labels(statement, outcome).observe(record.elapsed)


async def observe_queries(conn: asyncpg.Connection) -> None:
    """Connection init: time every statement into atlas_pg_query_duration_seconds."""
    conn.add_query_logger(_log_query)


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (a round trip on every release).

    Nothing borrows a pool connection to change its session: no session SET, LISTEN or
    advisory lock (the relay and migrations use connections of their own), and transactions
    are scoped. asyncpg still rolls back a transaction left open before this is called.
    """


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
            init=observe_queries,
            reset=keep_session,
            server_settings=pool_settings(s.postgres_lock_timeout_s),
        )
        pool = self.pg
        PG_POOL_SIZE.set_function(lambda: pool.get_size())
        PG_POOL_IN_USE.set_function(lambda: pool.get_size() - pool.get_idle_size())
        PG_POOL_MAX.set(s.postgres_pool_max)
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

    async def _kafka_client(self) -> AIOKafkaClient:
        assert self.kafka is not None, "resources not started"
        if not self._kafka_bootstrapped:
            await self.kafka.bootstrap()
            # Its background refresh would otherwise fetch every topic's metadata.
            await track_existing(self.kafka, [OFFSETS_TOPIC])
            self._kafka_bootstrapped = True
        return self.kafka

    async def kafka_metadata(self) -> int:
        """Ask the cluster for its brokers (no topic metadata); return how many it has."""
        return await brokers(await self._kafka_client())

    async def kafka_unready(self, topics: list[str]) -> dict[str, str]:
        """Those of `topics` the cluster cannot take records on yet, with the reason."""
        return await unready(await self._kafka_client(), topics)

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
