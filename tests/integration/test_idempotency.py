"""Idempotency keys and the outbox write against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
import orjson
import pytest

from web import idempotency
from web.idempotency import Effect, OutboxRow

pytestmark = pytest.mark.integration
LOCK_WAIT = idempotency.pool_settings(0.2)  # as the worker's pool has it


@pytest.fixture
def db_url(make_database: Callable[[bool], str]) -> str:
    return make_database(True)


async def new_client(pool: asyncpg.Pool) -> uuid.UUID:
    client_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO api_clients (name, key_prefix, key_hash) VALUES ($1, 'x', $2) RETURNING id",
        f"client-{uuid.uuid4().hex[:8]}",
        uuid.uuid4().bytes,
    )
    return client_id


def effect() -> Effect:
    transfer_id = str(uuid.uuid4())
    row = OutboxRow(
        "account",
        "acc-1",
        "RequestTransfer",
        "t.commands",
        orjson.dumps({"transfer_id": transfer_id}).decode(),
    )
    return Effect(202, {"transfer_id": transfer_id, "status": "pending"}, transfer_id, [row])


async def run(
    pool: asyncpg.Pool, client: uuid.UUID, key: str, body: dict[str, object]
) -> idempotency.Result:
    """One request in a transaction of its own: its result, or the exception it gets."""
    (outcome,) = await idempotency.run_batch(
        pool, [pending(client, key, body)], retention_s=3600, timeout_s=5
    )
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def test_a_retry_replays_and_another_payload_is_refused(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, server_settings=LOCK_WAIT, min_size=1, max_size=4)
    try:
        client = await new_client(pool)
        first = await run(pool, client, "k1", {"amount": 5, "to": "b"})
        again = await run(pool, client, "k1", {"to": "b", "amount": 5})  # same, reordered
        assert (first.replayed, again.replayed) == (False, True)
        assert again.body == first.body and again.status == 202
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
        with pytest.raises(idempotency.KeyReusedForAnotherRequest):
            await run(pool, client, "k1", {"amount": 6, "to": "b"})
        other_client = await new_client(pool)  # keys are scoped per client
        assert not (await run(pool, other_client, "k1", {"amount": 5, "to": "b"})).replayed
        row = await pool.fetchrow(
            "SELECT state, response_status, expires_at > now() AS live"
            " FROM idempotency_keys WHERE client_id = $1",
            client,
        )
        assert (row["state"], row["response_status"], row["live"]) == ("completed", 202, True)
    finally:
        await pool.close()


async def test_fifty_concurrent_requests_with_one_key_write_once(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, server_settings=LOCK_WAIT, min_size=10, max_size=50)
    try:
        client = await new_client(pool)
        body = {"amount": 5, "to": "b"}
        results = await asyncio.gather(
            *(run(pool, client, "same-key", body) for _ in range(50)), return_exceptions=True
        )
        fresh = [r for r in results if isinstance(r, idempotency.Result) and not r.replayed]
        replays = [r for r in results if isinstance(r, idempotency.Result) and r.replayed]
        busy = [r for r in results if isinstance(r, idempotency.RequestInFlight)]
        assert len(fresh) == 1
        assert len(replays) + len(busy) == 49, results
        assert all(r.body == fresh[0].body for r in replays)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    finally:
        await pool.close()


def pending(client: uuid.UUID, key: str, body: dict[str, object]) -> idempotency.Pending:
    return idempotency.Pending(
        client, key, idempotency.fingerprint("POST", "/v1/transfers", body), effect()
    )


def committer(pool: asyncpg.Pool) -> idempotency.GroupCommit:
    return idempotency.GroupCommit(lambda: pool, retention_s=3600, timeout_s=5, concurrency=2)


async def test_group_commit_shares_transactions_and_keeps_every_answer(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, server_settings=LOCK_WAIT, min_size=2, max_size=4)
    try:
        client = await new_client(pool)
        group = committer(pool)
        first = await group.submit(pending(client, "reused", {"amount": 1}))
        requests = [pending(client, f"k{i}", {"amount": i}) for i in range(200)]
        requests.append(pending(client, "reused", {"amount": 2}))  # same key, another body
        requests.append(pending(client, "reused", {"amount": 1}))  # a plain retry
        results = await asyncio.gather(*(group.submit(p) for p in requests), return_exceptions=True)
        fresh = results[:200]
        assert all(isinstance(r, idempotency.Result) and not r.replayed for r in fresh), fresh
        assert [r.body for r in fresh] == [p.effect.body for p in requests[:200]]  # type: ignore[union-attr]
        assert isinstance(results[200], idempotency.KeyReusedForAnotherRequest)
        replay = results[201]
        assert isinstance(replay, idempotency.Result) and replay.replayed
        assert replay.body == first.body
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 201
        assert group.transactions < 100, group.transactions  # batched, not one per request
    finally:
        await pool.close()


async def test_group_commit_with_one_key_from_fifty_requests_writes_once(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, server_settings=LOCK_WAIT, min_size=2, max_size=4)
    try:
        client = await new_client(pool)
        group = committer(pool)
        results = await asyncio.gather(
            *(group.submit(pending(client, "same", {"amount": 5})) for _ in range(50)),
            return_exceptions=True,
        )
        fresh = [r for r in results if isinstance(r, idempotency.Result) and not r.replayed]
        replays = [r for r in results if isinstance(r, idempotency.Result) and r.replayed]
        busy = [r for r in results if isinstance(r, idempotency.RequestInFlight)]
        assert len(fresh) == 1 and len(replays) + len(busy) == 49, results
        assert all(r.body == fresh[0].body for r in replays)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
    finally:
        await pool.close()


async def test_a_key_held_elsewhere_fails_only_its_own_request(db_url: str) -> None:
    pool = await asyncpg.create_pool(db_url, server_settings=LOCK_WAIT, min_size=2, max_size=4)
    holder = await asyncpg.connect(db_url)
    try:
        client = await new_client(pool)
        body = {"amount": 1}
        held = pending(client, "held", body)
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "INSERT INTO idempotency_keys (client_id, idempotency_key, fingerprint, state,"
            " expires_at) VALUES ($1, 'held', $2, 'in_flight', now() + interval '1 hour')",
            client,
            held.request_fingerprint,
        )
        group = committer(pool)
        others = [pending(client, f"free-{i}", body) for i in range(5)]
        results = await asyncio.gather(
            *(group.submit(p) for p in [*others, held]), return_exceptions=True
        )
        await tx.rollback()
        assert all(isinstance(r, idempotency.Result) and not r.replayed for r in results[:5])
        assert isinstance(results[5], idempotency.RequestInFlight), results[5]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 5
    finally:
        await holder.close()
        await pool.close()
