"""The worker's dependency checks, built from the clients the composition root owns."""

from __future__ import annotations

from collections.abc import Callable

from streams.resources import Resources
from streams.settings import Settings
from tables.errors import DependencyUnavailable, MigrationError
from web import migrate
from web.health import Check


def dependency_checks(
    resources: Resources, settings: Settings, tables_ready: Callable[[], bool]
) -> list[Check]:
    async def postgres() -> None:
        if resources.pg is None:
            raise DependencyUnavailable("pool not started")
        async with resources.pg.acquire(timeout=settings.postgres_timeout_s) as conn:
            await conn.fetchval("SELECT 1")

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
        if resources.redis is None:
            raise DependencyUnavailable("client not started")
        await resources.redis.ping()  # type: ignore[misc]  # typed as bool | Awaitable[bool]

    async def kafka() -> None:
        await resources.kafka_metadata()

    async def recovery() -> int:
        if not tables_ready():
            raise DependencyUnavailable("table recovery in progress")
        return 1

    return [
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
        Check(
            "worker:tablesRecovered", "system", recovery, 1.0, observed_unit="boolean", timed=False
        ),
    ]
