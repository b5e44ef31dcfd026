import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from web.metrics import HTTP_DURATION, HTTP_REQUESTS, REGISTRY
from web.middleware import MIDDLEWARES, edge_middleware


async def item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["id"]})


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("the database password is hunter2")


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=MIDDLEWARES)
    app.router.add_get("/v1/items/{id}", item)
    app.router.add_get("/boom", boom)
    async with TestClient(TestServer(app)) as c:
        yield c


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def test_correlation_id_is_echoed_or_generated(client: TestClient) -> None:
    r = await client.get("/v1/items/1", headers={"X-Correlation-ID": "abc-123"})
    assert r.headers["X-Correlation-ID"] == "abc-123"
    r = await client.get("/v1/items/1", headers={"X-Request-ID": "req-9"})
    assert r.headers["X-Correlation-ID"] == "req-9"
    r = await client.get("/v1/items/1")
    assert len(r.headers["X-Correlation-ID"]) == 32
    r = await client.get("/v1/items/1", headers={"X-Correlation-ID": "bad value\twith tab"})
    assert r.headers["X-Correlation-ID"] != "bad value\twith tab"


async def test_red_metrics_use_the_route_template(client: TestClient) -> None:
    labels = {"method": "GET", "route": "/v1/items/{id}", "status": "200"}
    before = sample("http_requests_total", **labels)
    count_before = sample(
        "http_request_duration_seconds_count", method="GET", route="/v1/items/{id}"
    )
    for i in range(3):
        assert (await client.get(f"/v1/items/{i}")).status == 200
    assert sample("http_requests_total", **labels) == before + 3
    after = sample("http_request_duration_seconds_count", method="GET", route="/v1/items/{id}")
    assert after == count_before + 3
    assert HTTP_REQUESTS is not None and HTTP_DURATION is not None


async def test_unknown_paths_are_problem_json_and_do_not_explode_cardinality(
    client: TestClient,
) -> None:
    before = sample("http_requests_total", method="GET", route="unmatched", status="404")
    r = await client.get("/nowhere/at/all")
    assert r.status == 404
    assert r.headers["Content-Type"].startswith("application/problem+json")
    body = await r.json(content_type=None)
    assert body["status"] == 404 and body["title"] == "Not Found" and body["type"] == "about:blank"
    assert (
        sample("http_requests_total", method="GET", route="unmatched", status="404") == before + 1
    )


async def test_wrong_method_is_405_problem_with_allow(client: TestClient) -> None:
    r = await client.post("/v1/items/1")
    assert r.status == 405
    assert "GET" in r.headers["Allow"]
    assert (await r.json(content_type=None))["status"] == 405


async def test_unhandled_errors_are_500_problem_without_internals(client: TestClient) -> None:
    r = await client.get("/boom", headers={"X-Correlation-ID": "c-1"})
    assert r.status == 500
    body = await r.json(content_type=None)
    assert body["type"] == "/problems/internal-error"
    assert "hunter2" not in await r.text()
    assert r.headers["X-Correlation-ID"] == "c-1"


async def test_deadline_cuts_off_slow_api_requests_with_a_problem() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1)
        return web.json_response({})

    app = web.Application(middlewares=[edge_middleware(0.1)])
    app.router.add_get("/v1/slow", slow)
    app.router.add_get("/health/slow", slow)
    async with TestClient(TestServer(app)) as c:
        before = sample("atlas_http_deadline_exceeded_total", route="/v1/slow")
        started = time.monotonic()
        r = await c.get("/v1/slow")
        assert time.monotonic() - started < 2
        assert r.status == 504
        assert r.content_type == "application/problem+json"
        assert (await r.json())["type"].endswith("deadline-exceeded")
        assert sample("atlas_http_deadline_exceeded_total", route="/v1/slow") == before + 1
        with pytest.raises(asyncio.TimeoutError):  # only the API is bounded
            await c.get("/health/slow", timeout=aiohttp.ClientTimeout(total=0.3))


async def test_a_timeout_of_the_handlers_own_is_not_the_deadline() -> None:
    async def times_out(request: web.Request) -> web.Response:
        raise TimeoutError("a call of the handler's own timed out")

    app = web.Application(middlewares=[edge_middleware(5.0)])
    app.router.add_get("/v1/inner", times_out)
    async with TestClient(TestServer(app)) as c:
        before = sample("atlas_http_deadline_exceeded_total", route="/v1/inner")
        r = await c.get("/v1/inner")
        assert r.status == 500  # escaped the handler: a bug, not the request's deadline
        assert (await r.json())["type"] == "/problems/internal-error"
        assert sample("atlas_http_deadline_exceeded_total", route="/v1/inner") == before


async def test_a_long_poll_gets_its_wait_on_top_of_the_deadline() -> None:
    async def poll(request: web.Request) -> web.Response:
        extra = float(request.query["extra"])
        await asyncio.sleep(float(request.query.get("wait", "0")) + extra)
        return web.json_response({"done": True})

    app = web.Application(middlewares=[edge_middleware(0.2)])
    app.router.add_get("/v1/poll", poll)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/v1/poll?wait=0.5&extra=0.05")).status == 200
        assert (await c.get("/v1/poll?wait=0.3&extra=0.6")).status == 504
