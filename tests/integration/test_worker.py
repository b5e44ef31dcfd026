"""A real worker process against the real stack: health, metrics, logs, crash recovery."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from tests.integration.processes import WorkerProcess
from tests.tools import require

pytestmark = pytest.mark.integration

Spawn = Callable[..., WorkerProcess]


@pytest.fixture(scope="module")
def worker(base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> WorkerProcess:
    from tests.integration.processes import free_port

    port = free_port()
    tmp = tmp_path_factory.mktemp("worker")
    env = {**base_env, "ATLAS_WEB_PORT": str(port), "ATLAS_DATA_DIR": str(tmp / "data")}
    w = WorkerProcess(env, port, tmp / "worker.log").start()
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


def test_liveness_needs_no_dependency(worker: WorkerProcess) -> None:
    r = worker.get("/health/live")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/health+json")
    assert r.json()["status"] == "pass"


def test_readiness_reports_every_dependency_passing(worker: WorkerProcess) -> None:
    r = worker.get("/health/ready")
    assert r.status == 200
    checks = r.json()["checks"]
    for key in (
        "postgres:responseTime",
        "postgres:migrations",
        "redis:responseTime",
        "kafka:responseTime",
        "worker:tablesRecovered",
    ):
        assert checks[key][0]["status"] == "pass", (key, checks[key])


def test_health_document_follows_the_draft(worker: WorkerProcess) -> None:
    r = worker.get("/health")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/health+json")
    doc = r.json()
    assert doc["status"] == "pass"
    pg = doc["checks"]["postgres:responseTime"][0]
    assert pg["componentType"] == "datastore"
    assert pg["observedUnit"] == "ms"
    assert isinstance(pg["observedValue"], float)
    assert pg["time"].endswith("Z")
    assert doc["checks"]["postgres:migrations"][0]["observedValue"] >= 1


def test_metrics_record_red_by_route_template_and_pass_promtool(worker: WorkerProcess) -> None:
    for _ in range(3):
        worker.get("/health/live")
    worker.get("/no/such/path/42")
    r = worker.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    text = r.body.decode()
    assert 'http_requests_total{method="GET",route="/health/live",status="200"}' in text
    assert 'http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert "/no/such/path/42" not in text
    assert (
        'http_request_duration_seconds_bucket{le="0.005",method="GET",route="/health/live"}' in text
    )
    promtool = require("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=r.body, capture_output=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_logs_are_json_lines_carrying_the_correlation_id(worker: WorkerProcess) -> None:
    r = worker.get("/does-not-exist", headers={"X-Correlation-ID": "test-corr-42"})
    assert r.status == 404
    assert r.headers["X-Correlation-ID"] == "test-corr-42"
    assert r.headers["Content-Type"].startswith("application/problem+json")

    def logged() -> list[dict[str, object]]:
        return [rec for rec in worker.log_records() if rec.get("correlation_id") == "test-corr-42"]

    deadline = time.monotonic() + 5
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.1)
    (line,) = logged()
    assert {"timestamp", "level", "logger", "event"} <= set(line)
    assert line["status"] == 404


def test_a_sigkilled_worker_restarts_ready_without_manual_steps(spawn_worker: Spawn) -> None:
    first = spawn_worker()
    first.wait_ready()
    first.kill()
    assert first.proc is not None and first.proc.returncode == -9
    second = spawn_worker(port=first.port, ATLAS_DATA_DIR=first.env["ATLAS_DATA_DIR"])
    started = time.monotonic()
    second.wait_ready(timeout=90)
    assert time.monotonic() - started < 90
