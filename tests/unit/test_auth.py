"""API-client authentication without services: keys, the cached lookup, the middleware."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import asyncpg
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from tables.errors import DependencyUnavailable
from web import auth
from web.auth import CLIENT, ApiClient, ClientStore, auth_middleware
from web.metrics import REGISTRY
from web.middleware import MIDDLEWARES

ALICE = ApiClient(uuid.UUID("00000000-0000-4000-8000-00000000a11c"), "alice")
MALLORY = ApiClient(
    uuid.UUID("00000000-0000-4000-8000-0000000bad00"), "mallory", datetime(2026, 1, 1, tzinfo=UTC)
)
ALICE_KEY = auth.new_key()[0]
MALLORY_KEY = auth.new_key()[0]
UNKNOWN_KEY = auth.new_key()[0]


# --- keys ------------------------------------------------------------------------------------


def test_keys_are_atl_plus_32_random_bytes_urlsafe() -> None:
    key, prefix, digest = auth.new_key()
    assert key.startswith("atl_") and len(key) == 4 + 43
    secret = key.removeprefix("atl_")
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    assert set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert prefix == secret[:8] == auth.key_prefix(key)
    assert digest == auth.hash_key(key)
    assert auth.looks_like_key(key)


def test_keys_do_not_repeat() -> None:
    keys = {auth.new_key()[0] for _ in range(1000)}
    assert len(keys) == 1000
    assert len({k[4:12] for k in keys}) > 990  # prefixes tell keys apart in practice


def test_only_a_sha256_hash_is_kept() -> None:
    key, _, digest = auth.new_key()
    assert digest == hashlib.sha256(key.encode()).digest() == auth.hash_key(key)
    assert len(digest) == 32 and key.encode() not in digest
    assert auth.hash_key(auth.new_key()[0]) != digest


@pytest.mark.parametrize(
    "value",
    ["", "atl_", "atl_short", ALICE_KEY + "x", ALICE_KEY[:-1] + "=", "xyz_" + ALICE_KEY[4:]],
)
def test_malformed_keys_are_recognised(value: str) -> None:
    assert not auth.looks_like_key(value)


# --- ClientStore -----------------------------------------------------------------------------


def record(client: ApiClient) -> dict[str, Any]:
    return {"id": client.id, "name": client.name, "revoked_at": client.revoked_at}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_pool(fetchrow: AsyncMock) -> MagicMock:
    pool = MagicMock(spec_set=asyncpg.Pool)
    pool.fetchrow = fetchrow
    return pool


async def test_store_caches_lookups_for_the_ttl() -> None:
    fetchrow = AsyncMock(return_value=record(ALICE))
    clock = Clock()
    store = ClientStore(lambda: fake_pool(fetchrow), timeout_s=1, ttl_s=30, clock=clock)

    assert await store.lookup(ALICE_KEY) == ALICE
    assert await store.lookup(ALICE_KEY) == ALICE
    assert fetchrow.await_count == 1
    assert fetchrow.await_args is not None
    query, digest = fetchrow.await_args.args
    assert digest == auth.hash_key(ALICE_KEY) and ALICE_KEY not in query

    fetchrow.return_value = record(MALLORY)  # e.g. revoked meanwhile
    clock.now += 29.9
    assert await store.lookup(ALICE_KEY) == ALICE
    clock.now += 0.2
    assert await store.lookup(ALICE_KEY) == MALLORY
    assert fetchrow.await_count == 2


async def test_store_caches_unknown_keys_apart_and_bounded() -> None:
    fetchrow = AsyncMock(return_value=record(ALICE))
    store = ClientStore(lambda: fake_pool(fetchrow), timeout_s=1, max_entries=3, clock=Clock())
    assert await store.lookup(ALICE_KEY) == ALICE

    fetchrow.return_value = None
    for _ in range(10):
        assert await store.lookup(auth.new_key()[0]) is None
    assert len(store) == 1 + 3  # alice, and the 3 newest unknown keys

    fetchrow.return_value = record(MALLORY)
    assert await store.lookup(ALICE_KEY) == ALICE  # still cached: spraying did not evict it
    store.clear()
    assert await store.lookup(ALICE_KEY) == MALLORY


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(111, "refused"),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed"),
        asyncpg.exceptions.UndefinedTableError("no api_clients"),
        asyncpg.InterfaceError("pool is closing"),
    ],
)
async def test_store_failures_are_dependency_unavailable(failure: Exception) -> None:
    fetchrow = AsyncMock(side_effect=failure)
    store = ClientStore(lambda: fake_pool(fetchrow), timeout_s=1)
    with pytest.raises(DependencyUnavailable):
        await store.lookup(ALICE_KEY)
    fetchrow.side_effect = None
    fetchrow.return_value = record(ALICE)
    assert await store.lookup(ALICE_KEY) == ALICE  # a failure is never cached


async def test_store_lookups_time_out() -> None:
    async def slow(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(10)

    store = ClientStore(lambda: fake_pool(AsyncMock(side_effect=slow)), timeout_s=0.05)
    started = asyncio.get_running_loop().time()
    with pytest.raises(DependencyUnavailable):
        await store.lookup(ALICE_KEY)
    assert asyncio.get_running_loop().time() - started < 1


async def test_store_without_a_pool_is_unavailable() -> None:
    with pytest.raises(DependencyUnavailable):
        await ClientStore(lambda: None, timeout_s=1).lookup(ALICE_KEY)


# --- middleware ------------------------------------------------------------------------------


class FakeLookup:
    """Known keys -> clients; `failure` makes every lookup raise it."""

    def __init__(self, clients: dict[str, ApiClient]) -> None:
        self.clients = clients
        self.failure: Exception | None = None
        self.calls = 0

    async def __call__(self, key: str) -> ApiClient | None:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return self.clients.get(key)


async def whoami(request: web.Request) -> web.Response:
    client = request[CLIENT]
    bound = structlog.contextvars.get_contextvars()
    structlog.get_logger("test").info("handled", bound_client_id=bound.get("client_id"))
    return web.json_response(
        {"id": str(client.id), "name": client.name, "bound": bound.get("client_id")}
    )


async def open_route(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
def lookup() -> FakeLookup:
    return FakeLookup({ALICE_KEY: ALICE, MALLORY_KEY: MALLORY})


@pytest.fixture
async def client(lookup: FakeLookup) -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[*MIDDLEWARES, auth_middleware(lookup)])
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_get("/v1/accounts/{id}", whoami)
    for path in ("/health", "/health/live", "/metrics", "/openapi.json", "/docs", "/redoc", "/ops"):
        app.router.add_get(path, open_route)
    async with TestClient(TestServer(app)) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def problem(response: Any, status: int, type_: str) -> dict[str, Any]:
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == status and body["type"] == type_
    return body


async def test_a_known_key_reaches_the_handler_with_the_client(client: TestClient) -> None:
    r = await client.get("/v1/whoami", headers=bearer(ALICE_KEY))
    assert r.status == 200
    assert await r.json() == {"id": str(ALICE.id), "name": "alice", "bound": str(ALICE.id)}
    assert "X-Correlation-ID" in r.headers
    assert "client_id" not in structlog.contextvars.get_contextvars()  # unbound afterwards


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_scheme_is_case_insensitive(client: TestClient, scheme: str) -> None:
    r = await client.get("/v1/whoami", headers={"Authorization": f"{scheme}  {ALICE_KEY} "})
    assert r.status == 200


async def test_a_missing_key_is_401_with_a_bearer_challenge(
    client: TestClient, lookup: FakeLookup
) -> None:
    r = await client.get("/v1/whoami")
    await problem(r, 401, "/problems/unauthenticated")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error=" not in r.headers["WWW-Authenticate"]
    assert lookup.calls == 0


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Bearer",
        "Bearer ",
        f"Basic {ALICE_KEY}",
        f"Token {ALICE_KEY}",
        ALICE_KEY,
        "Bearer not-a-key",
        f"Bearer {ALICE_KEY}x",
        f"Bearer {ALICE_KEY} extra",
    ],
)
async def test_a_malformed_header_is_401_without_a_lookup(
    client: TestClient, lookup: FakeLookup, header: str
) -> None:
    r = await client.get("/v1/whoami", headers={"Authorization": header})
    await problem(r, 401, "/problems/unauthenticated")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert lookup.calls == 0


async def test_an_unknown_key_is_401(client: TestClient, lookup: FakeLookup) -> None:
    r = await client.get("/v1/accounts/acc-1", headers=bearer(UNKNOWN_KEY))
    body = await problem(r, 401, "/problems/unauthenticated")
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="atlas", error="invalid_token"'
    assert body["instance"] == "/v1/accounts/acc-1"
    assert lookup.calls == 1


async def test_a_revoked_client_is_403(client: TestClient) -> None:
    r = await client.get("/v1/whoami", headers=bearer(MALLORY_KEY))
    await problem(r, 403, "/problems/forbidden")
    assert "WWW-Authenticate" not in r.headers


async def test_refusals_are_correlated_and_counted(client: TestClient) -> None:
    labels = {"method": "GET", "route": "/v1/whoami", "status": "401"}
    before = REGISTRY.get_sample_value("http_requests_total", labels) or 0.0
    r = await client.get("/v1/whoami", headers={"X-Correlation-ID": "corr-401"})
    assert r.status == 401 and r.headers["X-Correlation-ID"] == "corr-401"
    assert REGISTRY.get_sample_value("http_requests_total", labels) == before + 1


async def test_unknown_v1_paths_are_not_revealed_to_strangers(client: TestClient) -> None:
    await problem(await client.get("/v1/nowhere"), 401, "/problems/unauthenticated")
    r = await client.get("/v1/nowhere", headers=bearer(ALICE_KEY))
    assert r.status == 404


@pytest.mark.parametrize(
    "path", ["/health", "/health/live", "/metrics", "/openapi.json", "/docs", "/redoc", "/ops"]
)
async def test_open_paths_need_no_key(client: TestClient, lookup: FakeLookup, path: str) -> None:
    r = await client.get(path)
    assert r.status == 200
    r = await client.get(path, headers={"Authorization": "Bearer garbage"})
    assert r.status == 200
    assert lookup.calls == 0


@pytest.mark.parametrize(
    "failure",
    [
        DependencyUnavailable("client lookup failed: TimeoutError"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        TimeoutError(),
        OSError(111, "Connection refused"),
    ],
)
async def test_a_database_failure_is_503_not_401_or_500(
    client: TestClient, lookup: FakeLookup, failure: Exception
) -> None:
    lookup.failure = failure
    r = await client.get("/v1/whoami", headers=bearer(ALICE_KEY))
    await problem(r, 503, "/problems/unavailable")
    assert r.headers["Retry-After"] == "1"


async def test_a_store_whose_database_is_down_gives_503() -> None:
    failing = fake_pool(AsyncMock(side_effect=ConnectionRefusedError(111, "refused")))
    store = ClientStore(lambda: failing, timeout_s=1)
    app = web.Application(middlewares=[*MIDDLEWARES, auth_middleware(store.lookup)])
    app.router.add_get("/v1/whoami", whoami)
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/v1/whoami", headers=bearer(ALICE_KEY))
        await problem(r, 503, "/problems/unavailable")


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], str]]:
    """Everything logged through structlog and the stdlib, as one string."""
    caplog.set_level(logging.DEBUG)
    with capture_logs() as captured:

        def text() -> str:
            return repr(captured) + caplog.text

        yield text


async def test_no_key_ever_appears_in_the_logs(
    client: TestClient,
    lookup: FakeLookup,
    every_log: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key in (ALICE_KEY, MALLORY_KEY, UNKNOWN_KEY):
        await client.get("/v1/whoami", headers=bearer(key))
        await client.get("/v1/whoami", headers={"Authorization": f"Token {key}"})
    lookup.failure = DependencyUnavailable("down")
    await client.get("/v1/whoami", headers=bearer(ALICE_KEY))

    logged = every_log() + "".join(capsys.readouterr())
    assert "http request" in logged and "handled" in logged  # the capture did capture
    assert "revoked api client refused" in logged and "api client lookup failed" in logged
    for key in (ALICE_KEY, MALLORY_KEY, UNKNOWN_KEY):
        assert key not in logged
        assert key.removeprefix("atl_") not in logged
