"""Session fixtures of the integration tier: the services, a fresh database, worker processes."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.integration.processes import WorkerProcess, free_port
from tests.integration.stack import SESSION, Stack, services, tag
from tests.topics import delete_topics_containing
from web import migrate
from web.auth import create_client

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with services() as s:
        yield s
        # Every topic the session made holds its token (`tag`); the broker outlives the run.
        asyncio.run(asyncio.wait_for(delete_topics_containing(s.kafka_bootstrap, SESSION), 60))


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await migrate.migrate(conn, REPO_ROOT / "migrations")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def make_database(stack: Stack) -> Iterator[Callable[[bool], str]]:
    """Creates throwaway databases on the stack's server (migrated or empty); drops them after."""
    created: list[str] = []

    def make(migrated: bool = True) -> str:
        name = f"atlas_test_{uuid.uuid4().hex[:10]}"
        asyncio.run(_create_database(stack.database_url, name))
        created.append(name)
        url = with_database(stack.database_url, name)
        if migrated:
            asyncio.run(_migrate(url))
        return url

    yield make
    for name in created:
        asyncio.run(_drop_database(stack.database_url, name))


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[bool], str]) -> str:
    return make_database(True)


@pytest.fixture(scope="session")
def api_key(database_url: str) -> str:
    """An API client's key in the session database, for the /v1 routes."""

    async def make() -> str:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            return (await create_client(conn, f"tests-{uuid.uuid4().hex[:8]}"))[1]
        finally:
            await conn.close()

    return asyncio.run(make())


@pytest.fixture(scope="session")
def base_env(
    stack: Stack, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment of a worker under test: the stack, the test database, its own group id.

    Its own topics too (a prefix per session): a developer's stack may hold the unprefixed
    topics of `make run` or a benchmark, with another partition count.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    session = tag()
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=stack.kafka_bootstrap,
        DATABASE_URL=database_url,
        REDIS_URL=stack.redis_url,
        ATLAS_ENVIRONMENT="test",
        ATLAS_APP_NAME=f"atlas-test-{session}",
        ATLAS_TOPIC_PREFIX=f"t{session}.",
        ATLAS_LOG_LEVEL="INFO",
        ATLAS_KAFKA_SESSION_TIMEOUT_S="6",
        ATLAS_KAFKA_HEARTBEAT_INTERVAL_S="1",
        ATLAS_KAFKA_REBALANCE_TIMEOUT_S="10",
        ATLAS_TOPIC_PARTITIONS="4",
    )
    return env


@pytest.fixture
def spawn_worker(
    base_env: dict[str, str], tmp_path: Path, api_key: str
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers as subprocesses; every one still running is stopped at teardown."""
    started: list[WorkerProcess] = []

    def spawn(port: int | None = None, **env: str) -> WorkerProcess:
        port = port or free_port()
        worker_env = {
            **base_env,
            "ATLAS_WEB_PORT": str(port),
            "ATLAS_DATA_DIR": str(tmp_path / f"worker-{port}"),
            **env,
        }
        worker = WorkerProcess(worker_env, port, tmp_path / f"worker-{port}.log", api_key).start()
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.stop()
