"""Idempotency keys after draft-ietf-httpapi-idempotency-key-header, with the outbox write.

One PostgreSQL transaction claims the key (client, key), writes the outbox rows and stores the
response: a request that returned 202 has its command in the outbox, and a retry of it gets
the same response back without writing again. Concurrency falls out of the unique key: a
second request with the same key waits on the first one's claim for at most `busy_wait`, then
is told 409 (the first is still in flight), or replays the first one's response once it
committed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from prometheus_client import Histogram

from streams.relay import CHANNEL as NOTIFY_CHANNEL
from web.coalesce import Coalescer
from web.metrics import REGISTRY

WRITE_BATCH = Histogram(
    "atlas_write_batch_size",
    "Requests whose writes shared one PostgreSQL transaction (group commit).",
    registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


def fingerprint(method: str, path: str, body: Any) -> bytes:
    """Method, path and the body with its keys sorted: the same request hashes the same."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(method.encode() + b"\n" + path.encode() + b"\n" + canonical).digest()


@dataclass(frozen=True)
class OutboxRow:
    aggregate_type: str
    aggregate_id: str
    event_type: str
    topic: str
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    id: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass(frozen=True)
class Effect:
    """What a new request does: its response and the outbox rows that carry it out."""

    status: int
    body: dict[str, Any]
    resource_id: str
    rows: list[OutboxRow]


@dataclass(frozen=True)
class Result:
    status: int
    body: dict[str, Any]
    replayed: bool = False


class KeyReusedForAnotherRequest(Exception):
    """Same key, different request (422)."""


class RequestInFlight(Exception):
    """Same key while the first request is still being handled (409)."""


# ---------------------------------------------------------------------------------------------
# Group commit: the writes of concurrent requests share one transaction.


@dataclass(frozen=True)
class Pending:
    client_id: uuid.UUID
    key: str
    request_fingerprint: bytes
    effect: Effect


_CLAIM_MANY = """
INSERT INTO idempotency_keys (client_id, idempotency_key, fingerprint, state, resource_id,
                              response_status, response_body, expires_at)
SELECT c, k, f, 'completed', r, s, b::jsonb, now() + make_interval(secs => $7)
FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::int[], $6::text[])
    AS t(c, k, f, r, s, b)
ON CONFLICT (client_id, idempotency_key) DO NOTHING
RETURNING client_id, idempotency_key
"""
_OUTBOX_MANY = """
INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, topic, payload, headers)
SELECT i, at, ai, et, tp, p::jsonb, h::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
    AS t(i, at, ai, et, tp, p, h)
"""
_STORED_MANY = """
SELECT client_id, idempotency_key, fingerprint, state, response_status, response_body
FROM idempotency_keys
WHERE (client_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
"""


async def run_batch(
    pool: asyncpg.Pool,
    batch: list[Pending],
    *,
    retention_s: float,
    timeout_s: float,
    busy_wait_s: float,
) -> list[Result | Exception]:
    """Many requests' writes in one transaction; one outcome per request, in order.

    Per request: claim its key, or find it taken; a new claim writes the request's outbox rows;
    a taken key replays its stored answer (same fingerprint, completed), or is refused (422 for
    another fingerprint, 409 while in flight).

    A new key is stored completed together with its outbox rows, so there is no in-flight
    state to clean up: a concurrent request with the same key waits on the unique index until
    this transaction ends, then replays (or is told 409 after `busy_wait_s`). Two requests of one
    batch with the same key: the first is taken, the second replays it.
    """
    async with pool.acquire(timeout=timeout_s) as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{int(busy_wait_s * 1000)}ms'")
        try:
            claimed_rows = await conn.fetch(
                _CLAIM_MANY,
                [p.client_id for p in batch],
                [p.key for p in batch],
                [p.request_fingerprint for p in batch],
                [p.effect.resource_id for p in batch],
                [p.effect.status for p in batch],
                [orjson.dumps(p.effect.body).decode() for p in batch],
                retention_s,
                timeout=timeout_s,
            )
        except asyncpg.LockNotAvailableError:
            raise RequestInFlight("a key of this batch is in flight elsewhere") from None
        claimed = {(r["client_id"], r["idempotency_key"]) for r in claimed_rows}
        taken: set[tuple[uuid.UUID, str]] = set()
        winners: list[Pending] = []
        for p in batch:
            if (p.client_id, p.key) in claimed and (p.client_id, p.key) not in taken:
                taken.add((p.client_id, p.key))
                winners.append(p)
        rows = [r for p in winners for r in p.effect.rows]
        if rows:
            await conn.execute(
                _OUTBOX_MANY,
                [r.id for r in rows],
                [r.aggregate_type for r in rows],
                [r.aggregate_id for r in rows],
                [r.event_type for r in rows],
                [r.topic for r in rows],
                [orjson.dumps(r.payload).decode() for r in rows],
                [orjson.dumps(r.headers).decode() for r in rows],
                timeout=timeout_s,
            )
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL, timeout=timeout_s)
        losers = [p for p in batch if p not in winners]
        stored: dict[tuple[uuid.UUID, str], Any] = {}
        if losers:
            found = await conn.fetch(
                _STORED_MANY,
                [p.client_id for p in losers],
                [p.key for p in losers],
                timeout=timeout_s,
            )
            stored = {(r["client_id"], r["idempotency_key"]): r for r in found}
    outcomes: list[Result | Exception] = []
    for p in batch:
        if any(w is p for w in winners):
            outcomes.append(Result(p.effect.status, p.effect.body))
            continue
        row = stored.get((p.client_id, p.key))
        if row is None:
            outcomes.append(RequestInFlight(p.key))
        elif bytes(row["fingerprint"]) != p.request_fingerprint:
            outcomes.append(KeyReusedForAnotherRequest(p.key))
        elif row["state"] != "completed":
            outcomes.append(RequestInFlight(p.key))
        else:
            body = row["response_body"]
            outcomes.append(Result(row["response_status"], orjson.loads(body), replayed=True))
    return outcomes


class GroupCommit:
    """Coalesces concurrent `submit`s into shared transactions (group commit).

    A request waits in a queue while up to `concurrency` transactions are running; each running
    transaction takes everything queued (at most `max_batch`). No request is answered before
    the transaction holding its write has committed. Under no load a request runs alone, at
    once; under load the per-transaction cost is shared by the whole batch.

    A batch that fails as a whole (a connection error, or a key held by another transaction
    past `busy_wait_s`) is run again one request at a time, so one request's trouble is not
    its neighbours'.
    """

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool | None],
        *,
        retention_s: float,
        timeout_s: float,
        busy_wait_s: float,
        max_batch: int = 128,
        concurrency: int = 4,
    ) -> None:
        self._pool = pool
        self.retention_s, self.timeout_s, self.busy_wait_s = retention_s, timeout_s, busy_wait_s
        self._coalescer: Coalescer[Pending, Result] = Coalescer(
            self._commit, max_batch=max_batch, concurrency=concurrency
        )
        self.transactions = 0  # batches committed or failed, for tests and the benchmark

    async def submit(self, pending: Pending) -> Result:
        return await self._coalescer.submit(pending)

    async def _commit(self, batch: list[Pending]) -> list[Result | Exception]:
        pool = self._pool()
        if pool is None:
            raise OSError("PostgreSQL pool not started")
        return await self._run(pool, batch, alone=len(batch) == 1)

    async def _run(
        self, pool: asyncpg.Pool, batch: list[Pending], alone: bool
    ) -> list[Result | Exception]:
        options = {
            "retention_s": self.retention_s,
            "timeout_s": self.timeout_s,
            "busy_wait_s": self.busy_wait_s,
        }
        self.transactions += 1
        WRITE_BATCH.observe(len(batch))
        try:
            return await run_batch(pool, batch, **options)
        except Exception:
            if alone:
                raise
        outcomes: list[Result | Exception] = []
        for p in batch:
            self.transactions += 1
            try:
                outcomes.extend(await run_batch(pool, [p], **options))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes
