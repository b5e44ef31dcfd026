"""Every metric the Grafana dashboards and the alert rules query is served by a live worker."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest

from tests.integration.processes import WorkerProcess, free_port
from tests.promql import alert_exprs, dashboard_exprs, exposed_series_names, queried_names

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(
    base_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, api_key: str
) -> Iterator[WorkerProcess]:
    port = free_port()
    tmp = tmp_path_factory.mktemp("dashboards")
    env = {**base_env, "ATLAS_WEB_PORT": str(port), "ATLAS_DATA_DIR": str(tmp / "data")}
    w = WorkerProcess(env, port, tmp / "worker.log", api_key).start()
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def exposed(worker: WorkerProcess) -> set[str]:
    # A little traffic, so the labelled HTTP series have samples as well as declarations.
    worker.get("/health/live")
    worker.get("/v1/accounts/no-such-account")
    worker.get("/no/such/path")
    r = worker.get("/metrics")
    assert r.status == 200
    return exposed_series_names(r.body.decode())


def missing(exprs: Iterable[tuple[str, str]], exposed: set[str]) -> str:
    absent = {n: w for n, w in queried_names(exprs).items() if n not in exposed}
    return "\n".join(f"  {n}  <- {', '.join(sorted(w))}" for n, w in sorted(absent.items()))


def test_every_metric_a_dashboard_queries_is_exposed(exposed: set[str]) -> None:
    report = missing(dashboard_exprs(), exposed)
    assert not report, "queried by a dashboard, not on /metrics:\n" + report


def test_every_metric_an_alert_queries_is_exposed(exposed: set[str]) -> None:
    report = missing(alert_exprs(), exposed)
    assert not report, "queried by an alert rule, not on /metrics:\n" + report
