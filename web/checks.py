"""The worker's dependency checks, built from the clients the composition root owns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from streams.backlog import OutboxBacklog
from streams.lag import LagMonitor, Status
from streams.resilience import Dependency
from streams.resources import Resources
from streams.settings import Settings
from tables.errors import DependencyUnavailable, MigrationError
from web import migrate
from web.health import Check
from web.health import Status as HealthStatus


def dependency_checks(
    resources: Resources,
    settings: Settings,
    tables_ready: Callable[[], bool],
    backlog: OutboxBacklog | None = None,
    lag: LagMonitor | None = None,
    kafka_topics: Callable[[], Awaitable[int]] | None = None,
) -> list[Check]:
    # The probes go through the dependency's breaker: an open breaker answers at once, and once
    # it half-opens the probe is the trial call that closes it again.
    breakers = resources.breakers

    async def postgres() -> None:
        pool = resources.pg
        if pool is None:
            raise DependencyUnavailable("pool not started")

        async def select_one() -> None:
            async with pool.acquire(timeout=settings.postgres_timeout_s) as conn:
                await conn.fetchval("SELECT 1")

        await breakers.call("postgres", select_one)

    async def migrations() -> int:
        if resources.pg is None:
            raise DependencyUnavailable("pool not started")
        async with resources.pg.acquire(timeout=settings.postgres_timeout_s) as conn:
            state = await migrate.status(conn, settings.migrations_dir)
        problem = state.problem()
        if problem:
            raise MigrationError(problem)
        return len(migrate.discover(settings.migrations_dir))

    async def redis() -> None:
        client = resources.redis
        if client is None:
            raise DependencyUnavailable("client not started")

        async def ping() -> None:
            await asyncio.wait_for(client.ping(), settings.redis_timeout_s)  # type: ignore[arg-type]

        await breakers.call("redis", ping)

    async def kafka() -> None:
        await breakers.call("kafka", resources.kafka_metadata)

    topic_checks = (
        [
            # Every topic the worker reads or writes has leaders, and the producer that table
            # routing hashes keys with knows them: the first request after readiness can be
            # served.
            Check(
                "kafka:topics",
                "component",
                kafka_topics,
                settings.kafka_timeout_s,
                observed_unit="ready",
                timed=False,
            )
        ]
        if kafka_topics is not None
        else []
    )

    async def recovery() -> int:
        if not tables_ready():
            raise DependencyUnavailable("table recovery in progress")
        return 1

    def breaker(dependency: Dependency) -> Check:
        # An open breaker degrades (`warn`): the dependency's own probe says whether it is down.
        async def probe() -> int:
            state = resources.breakers.state(dependency)
            if state != "closed":
                raise DependencyUnavailable(f"circuit breaker {state}")
            return 0

        return Check(
            f"{dependency}:circuitBreaker",
            "component",
            probe,
            1.0,
            observed_unit="open",
            timed=False,
            failure_status="warn",
        )

    async def outbox_backlog() -> int:
        if backlog is None or backlog.measured_at is None:
            raise DependencyUnavailable("not measured yet")
        if backlog.over_limit:
            raise DependencyUnavailable(
                f"{backlog.rows} unpublished rows, limit {settings.outbox_backlog_limit}: "
                "writes are refused"
            )
        return backlog.rows

    def consumer_lag(failing: set[Status], failure_status: HealthStatus) -> Check:
        # Two entries under one key, one per severity: STOP fails, WARN and STALL degrade.
        async def probe() -> int:
            report = lag.report if lag is not None else None
            if report is None:
                return 0
            bad = sorted({p.status for p in report.partitions} & failing)
            if bad:
                raise DependencyUnavailable(f"group {report.group}: {', '.join(bad)}")
            return report.total

        return Check(
            "kafka:consumerLag",
            "component",
            probe,
            1.0,
            observed_unit="messages",
            timed=False,
            failure_status=failure_status,
        )

    lag_checks = (
        [consumer_lag({Status.STOP}, "fail"), consumer_lag({Status.WARN, Status.STALL}, "warn")]
        if lag is not None
        else []
    )
    return [
        *(breaker(d) for d in ("postgres", "redis", "kafka")),
        *lag_checks,
        Check(
            "outbox:backlog",
            "datastore",
            outbox_backlog,
            1.0,
            observed_unit="rows",
            timed=False,
            failure_status="warn",
        ),
        Check("postgres:responseTime", "datastore", postgres, settings.postgres_timeout_s),
        Check(
            "postgres:migrations",
            "datastore",
            migrations,
            settings.postgres_timeout_s,
            observed_unit="applied",
            timed=False,
        ),
        # Without Redis the service keeps taking writes (the rate limiter falls back to a
        # per-worker limit): degraded, not down.
        Check(
            "redis:responseTime",
            "datastore",
            redis,
            settings.redis_timeout_s,
            failure_status="warn",
        ),
        Check("kafka:responseTime", "component", kafka, settings.kafka_timeout_s),
        *topic_checks,
        Check(
            "worker:tablesRecovered", "system", recovery, 1.0, observed_unit="boolean", timed=False
        ),
    ]
