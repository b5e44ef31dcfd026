"""API clients against a real PostgreSQL: the `atlas clients-*` commands, the cached lookup and
the middleware chain in front of a handler."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tables.errors import DependencyUnavailable
from tests.integration.processes import free_port, run_atlas
from web import auth
from web.auth import CLIENT, ClientStore, auth_middleware
from web.middleware import MIDDLEWARES

pytestmark = pytest.mark.integration


@pytest.fixture
def db_url(make_database: Callable[[bool], str]) -> str:
    return make_database(True)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db_url, min_size=0, max_size=2, timeout=5)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_url, timeout=5)
    try:
        yield c
    finally:
        await c.close()


# --- the command line ------------------------------------------------------------------------


def test_cli_creates_lists_and_revokes_clients(db_url: str, base_env: dict[str, str]) -> None:
    env = {**base_env, "DATABASE_URL": db_url}

    def atlas(*args: str) -> subprocess.CompletedProcess[str]:
        return run_atlas(env, *args)

    created = atlas("clients-create", "acme")
    assert created.returncode == 0, created.stdout + created.stderr
    key = re.search(r"^key:\s+(\S+)$", created.stdout, re.MULTILINE)
    client_id = re.search(r"^id:\s+(\S+)$", created.stdout, re.MULTILINE)
    prefix = re.search(r"^prefix:\s+(\S+)$", created.stdout, re.MULTILINE)
    assert key and client_id and prefix, created.stdout
    assert auth.looks_like_key(key[1]) and auth.key_prefix(key[1]) == prefix[1]

    again = atlas("clients-create", "acme")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr

    listed = atlas("clients-list")
    assert listed.returncode == 0, listed.stderr
    assert "acme" in listed.stdout and client_id[1] in listed.stdout and prefix[1] in listed.stdout
    assert key[1] not in listed.stdout + listed.stderr
    assert key[1].removeprefix("atl_") not in listed.stdout

    revoked = atlas("clients-revoke", "acme")
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked acme" in revoked.stdout

    unknown = atlas("clients-revoke", "nobody")
    assert unknown.returncode == 1 and "no client named 'nobody'" in unknown.stderr

    row = asyncio.run(_row(db_url, "acme"))
    assert row["id"] == uuid.UUID(client_id[1])
    assert row["key_hash"] == auth.hash_key(key[1]) and row["key_prefix"] == prefix[1]
    assert row["revoked_at"] is not None
    relisted = atlas("clients-list").stdout
    assert row["revoked_at"].isoformat(timespec="seconds") in relisted


async def _row(url: str, name: str) -> asyncpg.Record:
    c = await asyncpg.connect(url, timeout=10)
    try:
        row = await c.fetchrow("SELECT * FROM api_clients WHERE name = $1", name)
        assert row is not None
        return row
    finally:
        await c.close()


# --- administration and lookup ---------------------------------------------------------------


async def test_a_created_client_is_found_by_its_key_only(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    client_id, key = await auth.create_client(conn, "svc-a")
    store = ClientStore(lambda: pool, timeout_s=2)
    found = await store.lookup(key)
    assert found is not None and (found.id, found.name, found.revoked) == (
        client_id,
        "svc-a",
        False,
    )
    assert await store.lookup(auth.new_key()[0]) is None

    stored = await conn.fetchrow("SELECT * FROM api_clients WHERE id = $1", client_id)
    assert stored is not None
    assert key.encode() not in bytes(stored["key_hash"]) and key not in repr(dict(stored))

    with pytest.raises(auth.ClientNameTaken):
        await auth.create_client(conn, "svc-a")
    with pytest.raises(auth.InvalidClientName):
        await auth.create_client(conn, "two words")
    with pytest.raises(auth.UnknownClient):
        await auth.revoke_client(conn, "nobody")

    listing = await auth.list_clients(conn)
    assert [(c.name, c.key_prefix, c.revoked_at) for c in listing] == [
        ("svc-a", auth.key_prefix(key), None)
    ]


async def test_revocation_takes_effect_within_the_ttl(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    _, key = await auth.create_client(conn, "svc-b")
    long_lived = ClientStore(lambda: pool, timeout_s=2, ttl_s=3600)
    short_lived = ClientStore(lambda: pool, timeout_s=2, ttl_s=0.2)
    for store in (long_lived, short_lived):
        client = await store.lookup(key)
        assert client is not None and not client.revoked

    revoked = await auth.revoke_client(conn, "svc-b")
    assert revoked.revoked
    again = await auth.revoke_client(conn, "svc-b")
    assert again.revoked_at == revoked.revoked_at  # idempotent: the first time is kept

    cached = await long_lived.lookup(key)
    assert cached is not None and not cached.revoked  # within the TTL: still the cached answer
    await asyncio.sleep(0.3)
    fresh = await short_lived.lookup(key)
    assert fresh is not None and fresh.revoked


async def test_postgres_failures_are_dependency_unavailable(db_url: str) -> None:
    nobody_listens = await asyncpg.create_pool(
        f"postgresql://atlas:atlas@127.0.0.1:{free_port()}/atlas", min_size=0, timeout=1
    )
    try:
        with pytest.raises(DependencyUnavailable):
            await ClientStore(lambda: nobody_listens, timeout_s=1).lookup(auth.new_key()[0])
    finally:
        await nobody_listens.close()

    # Every connection taken: waiting for one is bounded by timeout_s too.
    busy = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        async with busy.acquire():
            started = asyncio.get_running_loop().time()
            with pytest.raises(DependencyUnavailable):
                await ClientStore(lambda: busy, timeout_s=0.2).lookup(auth.new_key()[0])
            assert asyncio.get_running_loop().time() - started < 2
    finally:
        await busy.close()


# --- the middleware chain in front of a handler ------------------------------------------------


async def whoami(request: web.Request) -> web.Response:
    client = request[CLIENT]
    return web.json_response({"id": str(client.id), "name": client.name})


async def test_the_middleware_with_the_real_store(conn: asyncpg.Connection, db_url: str) -> None:
    client_id, key = await auth.create_client(conn, "svc-c")
    store_pool = await asyncpg.create_pool(db_url, min_size=0, max_size=2, timeout=5)
    store = ClientStore(lambda: store_pool, timeout_s=2, ttl_s=0.1)
    app = web.Application(middlewares=[*MIDDLEWARES, auth_middleware(store.lookup)])
    app.router.add_get("/v1/whoami", whoami)
    headers = {"Authorization": f"Bearer {key}"}
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/v1/whoami", headers=headers)
        assert r.status == 200
        assert await r.json() == {"id": str(client_id), "name": "svc-c"}

        assert (await c.get("/v1/whoami")).status == 401
        bad = {"Authorization": f"Bearer {auth.new_key()[0]}"}
        assert (await c.get("/v1/whoami", headers=bad)).status == 401

        await auth.revoke_client(conn, "svc-c")
        await asyncio.sleep(0.2)
        r = await c.get("/v1/whoami", headers=headers)
        assert r.status == 403
        assert (await r.json(content_type=None))["type"] == "/problems/forbidden"

        await store_pool.close()  # PostgreSQL gone, as the worker sees it
        await asyncio.sleep(0.2)
        r = await c.get("/v1/whoami", headers=headers)
        assert r.status == 503
        assert (await r.json(content_type=None))["type"] == "/problems/unavailable"
