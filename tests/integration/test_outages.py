"""Dependencies that go away and come back, while the worker keeps running.

Each test starts its own PostgreSQL or Redis (test-owned state folder and port, through the same
infra scripts the stack uses) so stopping it touches nothing the rest of the suite relies on.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.integration.processes import (
    Response,
    WorkerProcess,
    free_port,
    run_service_script,
    wait_until,
)
from web import migrate

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
Spawn = Callable[..., WorkerProcess]


class OwnService:
    def __init__(self, script: str, env: dict[str, str]) -> None:
        self.script, self.env = script, env

    def start(self) -> None:
        done = run_service_script(self.script, "start", self.env)
        assert done.returncode == 0, done.stdout + done.stderr

    def stop(self) -> None:
        done = run_service_script(self.script, "stop", self.env)
        assert done.returncode == 0, done.stdout + done.stderr


def service_env(tmp_path: Path, **urls: str) -> dict[str, str]:
    return {**os.environ, "ATLAS_STATE_DIR": str(tmp_path / "state"), **urls}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[OwnService, str]]:
    url = f"redis://127.0.0.1:{free_port()}/0"
    service = OwnService("redis", service_env(tmp_path, REDIS_URL=url))
    service.start()
    yield service, url
    service.stop()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[OwnService, str]]:
    url = f"postgresql://atlas:atlas@127.0.0.1:{free_port()}/atlas"
    service = OwnService("postgres", service_env(tmp_path, DATABASE_URL=url))
    service.start()

    async def apply() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await migrate.migrate(conn, REPO_ROOT / "migrations")
        finally:
            await conn.close()

    asyncio.run(apply())
    yield service, url
    service.stop()


def readiness(worker: WorkerProcess) -> tuple[int, dict[str, object]]:
    r = worker.get("/health/ready", timeout=8)
    return r.status, r.json()


def failed_checks(doc: dict[str, object]) -> set[str]:
    checks = doc["checks"]
    assert isinstance(checks, dict)
    return {key for key, results in checks.items() if results[0]["status"] == "fail"}


def test_a_redis_outage_degrades_health_and_writes_go_on(
    spawn_worker: Spawn, own_redis: tuple[OwnService, str]
) -> None:
    redis, url = own_redis
    worker = spawn_worker(REDIS_URL=url)
    worker.wait_ready()

    redis.stop()
    health = wait_until(
        lambda: (h := worker.get("/health")).json()["status"] == "warn" and h,
        timeout=10,
        what="health warn",
    )
    assert health.status == 200
    check = health.json()["checks"]["redis:responseTime"][0]
    assert check["status"] == "warn" and check["output"]
    assert readiness(worker)[0] == 200  # still ready: it keeps taking writes
    # The rate limiter falls back to a per-worker limit; requests are served, not refused.
    for _ in range(5):
        r = worker.get("/v1/accounts/nobody-here")
        assert r.status == 404, r.body
    assert metric(worker, "atlas_rate_limiter_fallbacks_total") >= 5

    redis.start()
    wait_until(
        lambda: worker.get("/health").json()["status"] == "pass", timeout=15, what="health pass"
    )
    assert worker.proc is not None and worker.proc.poll() is None, "the worker must not restart"


def metric(worker: WorkerProcess, name: str) -> float:
    for line in worker.get("/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ", 1)[1])
    return 0.0


def test_postgres_outage_turns_health_fail_within_10s_and_recovers(
    spawn_worker: Spawn, own_postgres: tuple[OwnService, str]
) -> None:
    postgres, url = own_postgres
    worker = spawn_worker(DATABASE_URL=url)
    worker.wait_ready()

    postgres.stop()
    _, doc = wait_until(
        lambda: (s := readiness(worker))[0] == 503 and s, timeout=10, what="readiness 503"
    )
    assert failed_checks(doc) == {"postgres:responseTime", "postgres:migrations"}
    health = worker.get("/health").json()
    assert health["status"] == "fail"
    assert health["checks"]["postgres:responseTime"][0]["output"]

    postgres.start()
    wait_until(lambda: readiness(worker)[0] == 200, timeout=15, what="readiness back to 200")
    assert worker.proc is not None and worker.proc.poll() is None, "the worker must not restart"


def test_writes_get_503_while_postgres_is_down_and_202_when_it_is_back(
    spawn_worker: Spawn, own_postgres: tuple[OwnService, str]
) -> None:
    from tests.integration.test_writes import post
    from web.auth import create_client

    postgres, url = own_postgres

    async def make_key() -> str:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return (await create_client(conn, "outage-client"))[1]
        finally:
            await conn.close()

    key = asyncio.run(make_key())
    worker = spawn_worker(DATABASE_URL=url)
    worker.api_key = key
    worker.wait_ready()

    def open_account(idem: str) -> Response:
        return post(worker, "/v1/accounts", {"owner_email": "o@x.io", "currency": "EUR"}, key, idem)

    assert open_account("before").status == 202  # also caches the client's key
    postgres.stop()
    started = time.monotonic()
    down = open_account("during")
    assert down.status == 503, down.body
    assert time.monotonic() - started < 5  # refused within the deadline, not hung
    assert down.headers["Retry-After"]
    assert down.json()["type"] == "/problems/unavailable"

    postgres.start()
    wait_until(lambda: open_account("during").status == 202, timeout=20, what="202 again")
