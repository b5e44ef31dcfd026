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

from tests.integration.load import WriteLoad
from tests.integration.processes import (
    WorkerProcess,
    free_port,
    run_service_script,
    wait_until,
)
from tests.integration.test_writes import fresh_client
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


def test_a_redis_outage_under_write_load_degrades_health_and_writes_go_on(
    spawn_worker: Spawn, own_redis: tuple[OwnService, str], api_key: str
) -> None:
    redis, url = own_redis
    worker = spawn_worker(REDIS_URL=url, ATLAS_BREAKER_RESET_S="2")
    worker.wait_ready()

    with WriteLoad(worker, api_key) as load:
        wait_until(lambda: len(load.accepted()) >= 10, timeout=20, what="load under way")
        redis.stop()
        stopped_at = time.monotonic()
        health = wait_until(
            lambda: (h := worker.get("/health")).json()["status"] == "warn" and h,
            timeout=10,
            what="health warn",
        )
        assert health.status == 200
        checks = health.json()["checks"]
        assert checks["redis:responseTime"][0]["status"] == "warn"
        assert checks["redis:responseTime"][0]["output"]
        assert readiness(worker)[0] == 200  # still ready: it keeps taking writes
        # The breaker opens: requests stop waiting on Redis and the local limiter decides.
        wait_until(
            lambda: (
                worker.get("/health").json()["checks"]["redis:circuitBreaker"][0]["status"]
                == "warn"
            ),
            timeout=10,
            what="redis breaker open in health",
        )
        assert metric(worker, 'atlas_circuit_breaker_state{dependency="redis"}') == 2
        during = len(load.answers)
        wait_until(lambda: len(load.answers) >= during + 20, timeout=20, what="writes go on")
        local = 'atlas_rate_limit_decisions_total{limiter="local",outcome="allowed"}'
        assert metric(worker, local) >= 20

        redis.start()
        wait_until(
            lambda: worker.get("/health").json()["status"] == "pass", timeout=20, what="pass again"
        )
        assert metric(worker, 'atlas_circuit_breaker_state{dependency="redis"}') == 0
        back = time.monotonic()
        wait_until(lambda: len(load.since(back)) >= 10, timeout=20, what="load after recovery")

    outage = load.since(stopped_at)
    assert outage, "no request was made during the outage"
    assert {a.status for a in load.answers} == {202}, sorted({a.status for a in load.answers})
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


def test_writes_under_load_get_503_while_postgres_is_down_and_nothing_accepted_is_lost(
    spawn_worker: Spawn, own_postgres: tuple[OwnService, str]
) -> None:
    postgres, url = own_postgres

    key = asyncio.run(fresh_client(url))
    deadline_s = 3.0
    worker = spawn_worker(
        DATABASE_URL=url, ATLAS_REQUEST_DEADLINE_S=str(deadline_s), ATLAS_BREAKER_RESET_S="2"
    )
    worker.api_key = key
    worker.wait_ready()

    with WriteLoad(worker, key) as load:
        wait_until(lambda: len(load.accepted()) >= 10, timeout=20, what="load under way")
        postgres.stop()
        stopped_at = time.monotonic()
        refused = wait_until(
            lambda: [a for a in load.since(stopped_at) if a.status == 503][:5],
            timeout=15,
            what="503s",
        )
        first = refused[0].response
        assert first is not None and first.headers["Retry-After"]
        assert first.json()["type"] == "/problems/unavailable"
        # The breaker opens and the write path stops waiting on a dead database.
        wait_until(
            lambda: metric(worker, 'atlas_circuit_breaker_state{dependency="postgres"}') == 2,
            timeout=15,
            what="postgres breaker open",
        )
        breaker = worker.get("/health").json()["checks"]["postgres:circuitBreaker"][0]
        assert breaker["status"] == "warn", breaker
        outage_end = time.monotonic() + 3
        wait_until(lambda: time.monotonic() > outage_end, timeout=5, what="outage under load")

        postgres.start()
        restarted_at = time.monotonic()
        wait_until(
            lambda: [a for a in load.since(restarted_at) if a.status == 202][:5],
            timeout=30,
            what="202 again",
        )

    during = [a for a in load.answers if stopped_at <= a.started_at < restarted_at]
    assert during, "no request was made during the outage"
    assert {a.status for a in during} <= {202, 503, 504}, sorted({a.status for a in during})
    assert 503 in {a.status for a in during}
    # No hung request: every answer came within the deadline (plus scheduling slack).
    slowest = max(a.elapsed_s for a in load.answers)
    assert slowest < deadline_s + 1.0, slowest
    assert {a.status for a in load.answers} <= {202, 503, 504}

    # Nothing that got 202 is lost: each has its completed key and its outbox row.
    accepted = load.accepted()

    async def stored() -> tuple[int, set[str]]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            keys = await conn.fetchval(
                "SELECT count(*) FROM idempotency_keys"
                " WHERE state = 'completed' AND idempotency_key = ANY($1::text[])",
                [a.idempotency_key for a in accepted],
            )
            rows = await conn.fetch(
                "SELECT aggregate_id FROM outbox WHERE aggregate_id = ANY($1::text[])",
                [a.account_id for a in accepted],
            )
            return keys, {r["aggregate_id"] for r in rows}
        finally:
            await conn.close()

    keys, outboxed = asyncio.run(stored())
    assert keys == len(accepted)
    assert outboxed == {a.account_id for a in accepted}
    assert worker.proc is not None and worker.proc.poll() is None, "the worker must not restart"
