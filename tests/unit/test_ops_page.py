"""The operator page without services: the status document from fakes, the routes, auth."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from streams.lag import LagReport, PartitionLag, Status
from streams.resilience import Dependency, State
from web.auth import ApiClient, auth_middleware
from web.middleware import MIDDLEWARES
from web.ops_page import OpsPage
from web.ops_status import OpsStatus, dead_letter_counts
from web.schemas import ConsumerLag, OperatorStatus, OpsBacklog

NOW = datetime(2026, 11, 26, 10, 0, 0, 250000, tzinfo=UTC)
REPORT = LagReport(
    group="atlas",
    status=Status.WARN,
    partitions=[
        PartitionLag("atlas.payments.v1", 0, 40, 52, 12, 3.25, Status.WARN),
        PartitionLag("atlas.payments.v1", 1, None, 7, 7, 1.0, Status.OK),
    ],
)


@dataclass
class FakeLag:
    report: LagReport | None = REPORT


@dataclass
class FakeBacklog:
    rows: int = 17
    oldest_s: float = 4.56789
    failed: int = 2
    measured_at: float | None = 98.5
    over_limit: bool = False


@dataclass
class FakeBreakers:
    states: dict[str, State] = field(default_factory=lambda: {"redis": "open"})

    def state(self, dependency: Dependency) -> State:
        return self.states.get(dependency, "closed")


@dataclass
class FakeRelay:
    is_leader: bool = True


def make_status(**overrides: Any) -> OpsStatus:
    options: dict[str, Any] = {
        "lag": FakeLag(),
        "backlog": FakeBacklog(),
        "backlog_limit": 10_000,
        "breakers": FakeBreakers(),
        "relay": FakeRelay(),
        "dead_letters": lambda: {"atlas.payments.v1": 3},
        "monotonic": lambda: 100.0,
        "now": lambda: NOW,
    }
    return OpsStatus(**{**options, **overrides})


def test_the_status_document_gathers_every_source() -> None:
    assert make_status().document() == {
        "generated_at": "2026-11-26T10:00:00.250Z",
        "lag": {
            "group": "atlas",
            "status": "WARN",
            "lag": 19,
            "partitions": [
                {
                    "topic": "atlas.payments.v1",
                    "partition": 0,
                    "committed": 40,
                    "end": 52,
                    "lag": 12,
                    "lag_seconds": 3.25,
                    "status": "WARN",
                },
                {
                    "topic": "atlas.payments.v1",
                    "partition": 1,
                    "committed": None,
                    "end": 7,
                    "lag": 7,
                    "lag_seconds": 1.0,
                    "status": "OK",
                },
            ],
        },
        "backlog": {
            "rows": 17,
            "oldest_s": 4.568,
            "failed": 2,
            "limit": 10_000,
            "shedding": False,
            "reading_age_s": 1.5,
        },
        "breakers": {"postgres": "closed", "redis": "open", "kafka": "closed"},
        "dead_letters": {"total": 3, "by_topic": {"atlas.payments.v1": 3}},
        "relay": {"leader": True},
    }


def test_before_the_first_readings_lag_and_backlog_age_are_null() -> None:
    document = make_status(
        lag=FakeLag(None),
        backlog=FakeBacklog(rows=0, oldest_s=0.0, measured_at=None),
        relay=FakeRelay(False),
        dead_letters=dict,
    ).document()
    assert document["lag"] is None
    assert document["backlog"]["reading_age_s"] is None
    assert document["dead_letters"] == {"total": 0, "by_topic": {}}
    assert document["relay"] == {"leader": False}


def test_a_failed_lag_reading_shows_its_error() -> None:
    failed = LagReport("atlas", Status.ERR, REPORT.partitions, "KafkaConnectionError: down")
    document = make_status(lag=FakeLag(failed)).document()
    assert document["lag"]["status"] == "ERR"
    assert document["lag"]["error"] == "KafkaConnectionError: down"
    assert len(document["lag"]["partitions"]) == 2  # the last good partitions stay


@pytest.mark.parametrize(
    "status",
    [
        make_status(),
        make_status(
            lag=FakeLag(None),
            backlog=FakeBacklog(rows=0, oldest_s=0.0, measured_at=None),
            dead_letters=dict,
        ),
        make_status(lag=FakeLag(LagReport("atlas", Status.ERR, REPORT.partitions, "down"))),
    ],
    ids=["readings", "before-readings", "failed-lag"],
)
def test_the_status_document_is_what_openapi_says(status: OpsStatus) -> None:
    document = status.document()
    OperatorStatus.model_validate(document)
    # Every key is declared (the model allows more, so check the names too).
    assert set(document) == set(OperatorStatus.model_fields)
    assert set(document["backlog"]) == set(OpsBacklog.model_fields)
    if document["lag"] is not None:
        assert set(document["lag"]) <= set(ConsumerLag.model_fields)


def test_dead_letter_counts_are_the_dead_lettered_outcomes_per_topic() -> None:
    events = Counter("events", "test", ["topic", "outcome"], registry=CollectorRegistry())
    assert dead_letter_counts(events) == {}
    events.labels("b.payments", "dead_lettered").inc(2)
    events.labels("a.commands", "dead_lettered").inc()
    events.labels("b.payments", "applied").inc(40)
    events.labels("c.legs", "rejected").inc()
    assert dead_letter_counts(events) == {"a.commands": 1, "b.payments": 2}


# --- routes ----------------------------------------------------------------------------------


async def no_client(key: str) -> ApiClient | None:
    return None


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[*MIDDLEWARES, auth_middleware(no_client)])
    OpsPage(make_status()).install(app.router)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_status_json_is_open_and_never_cached(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/ops/status.json")  # no Authorization header
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["dead_letters"]["total"] == 3
    assert body["breakers"]["redis"] == "open"


async def test_the_page_and_its_assets_are_open_and_self_contained(
    client: TestClient[web.Request, web.Application],
) -> None:
    page = await client.get("/ops")
    assert page.status == 200 and page.content_type == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    assert '<script src="/ops/ops.js">' in html and 'href="/ops/ops.css"' in html
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere

    script = await client.get("/ops/ops.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    text = await script.text()
    assert 'fetch("/ops/status.json"' in text and "const POLL_MS = 2000;" in text
    assert "innerHTML" not in text  # values are written as text, never parsed as HTML

    style = await client.get("/ops/ops.css")
    assert style.status == 200 and style.content_type == "text/css"
    assert (await client.get("/ops/other.js")).status == 404


async def test_v1_still_needs_a_key_beside_the_open_ops_routes() -> None:
    async def secret(request: web.Request) -> web.Response:
        return web.Response(text="secret")

    # A /v1 route on the same app stays behind auth: 401 without a key.
    app = web.Application(middlewares=[*MIDDLEWARES, auth_middleware(no_client)])
    OpsPage(make_status()).install(app.router)
    app.router.add_get("/v1/ops/lag", secret)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/v1/ops/lag")).status == 401
        assert (await c.get("/ops/status.json")).status == 200
        assert (await c.get(f"/ops?x={uuid.uuid4()}")).status == 200
