"""Idempotency keys after draft-ietf-httpapi-idempotency-key-header, with the outbox write.

One PostgreSQL transaction claims the key (client, key), writes the outbox rows and stores the
response: a request that returned 202 has its command in the outbox, and a retry of it gets
the same response back without writing again. Concurrency falls out of the unique key: a
second request with the same key waits on the first one's claim for at most the pool's
`lock_timeout` (`pool_settings`), then is told 409 (the first is still in flight), or replays
the first one's response once it committed.
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
    payload_json: str  # the message, encoded once, stored as jsonb
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
    headers: dict[str, str] = field(default_factory=dict)  # onto each of its outbox rows

    def row_headers(self, row: OutboxRow) -> dict[str, str]:
        return {**row.headers, **self.headers} if self.headers else row.headers


# One statement, so one round trip and its own transaction: claim the keys (a key stored
# already, or held by a transaction in flight, is skipped), write the outbox rows of the keys
# claimed, and wake the relay if any were. Both INSERTs commit together or not at all.
# The batch comes as two JSON arrays (claims, rows): encoding one document is far cheaper for
# the client than seventeen typed arrays, element by element.
_WRITE_MANY = """
WITH claimed AS (
    INSERT INTO idempotency_keys (client_id, idempotency_key, fingerprint, state, resource_id,
                                  response_status, response_body, expires_at)
    SELECT c, k, decode(f, 'hex'), 'completed', r, s, b, now() + make_interval(secs => $3)
    FROM json_to_recordset($1::json) AS t(c uuid, k text, f text, r text, s int, b jsonb)
    ON CONFLICT (client_id, idempotency_key) DO NOTHING
    RETURNING client_id, idempotency_key
), written AS (
    INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, topic, payload, headers)
    SELECT o.i, o.at, o.ai, o.et, o.tp, o.p, o.h
    FROM json_to_recordset($2::json)
        AS o(n int, c uuid, k text, i uuid, at text, ai text, et text, tp text, p jsonb, h jsonb)
    WHERE (o.c, o.k) IN (SELECT client_id, idempotency_key FROM claimed)
    ORDER BY o.n
    RETURNING 1
)
SELECT client_id, idempotency_key,
       (SELECT pg_notify($4, '')::text FROM written LIMIT 1) AS notified
FROM claimed
"""
_STORED_MANY = """
SELECT client_id, idempotency_key, fingerprint, state, response_status, response_body
FROM idempotency_keys
WHERE (client_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))
"""


def pool_settings(lock_wait_s: float) -> dict[str, str]:
    """Session settings of a pool that `run_batch` writes through.

    `lock_timeout` bounds how long a write waits on a key that another request's transaction
    holds: past it the batch fails with LockNotAvailableError, and its requests are retried
    alone (`GroupCommit`), the one with the held key getting 409.
    """
    return {"lock_timeout": f"{max(1, round(lock_wait_s * 1000))}ms"}


async def run_batch(
    pool: asyncpg.Pool, batch: list[Pending], *, retention_s: float, timeout_s: float
) -> list[Result | Exception]:
    """Many requests' writes in one statement (one transaction); one outcome per request.

    Per request: claim its key, or find it taken; a new claim writes the request's outbox rows;
    a taken key replays its stored answer (same fingerprint, completed), or is refused (422 for
    another fingerprint, 409 while in flight).

    A new key is stored completed together with its outbox rows, so there is no in-flight
    state to clean up: a concurrent request with the same key waits on the unique index until
    the statement holding it ends (at most the pool's `lock_timeout`, see `pool_settings`),
    then replays. Two requests of one batch with the same key: the first is written, the
    second replays it.
    """
    firsts: dict[tuple[uuid.UUID, str], Pending] = {}
    for p in batch:
        firsts.setdefault((p.client_id, p.key), p)
    claims = list(firsts.values())
    rows = [(p, r) for p in claims for r in p.effect.rows]
    async with pool.acquire(timeout=timeout_s) as conn:
        try:
            claimed_rows = await conn.fetch(
                _WRITE_MANY,
                orjson.dumps([_claim(p) for p in claims]).decode(),
                orjson.dumps([_row(n, p, r) for n, (p, r) in enumerate(rows)]).decode(),
                retention_s,
                NOTIFY_CHANNEL,
                timeout=timeout_s,
            )
        except asyncpg.LockNotAvailableError:
            raise RequestInFlight("a key of this batch is in flight elsewhere") from None
        claimed = {(r["client_id"], r["idempotency_key"]) for r in claimed_rows}
        written = {id(firsts[k]) for k in claimed}
        losers = [p for p in batch if id(p) not in written]
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
        if id(p) in written:
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


def _claim(p: Pending) -> dict[str, Any]:
    return {
        "c": str(p.client_id),
        "k": p.key,
        "f": p.request_fingerprint.hex(),
        "r": p.effect.resource_id,
        "s": p.effect.status,
        "b": p.effect.body,
    }


def _row(n: int, p: Pending, r: OutboxRow) -> dict[str, Any]:
    return {
        "n": n,
        "c": str(p.client_id),
        "k": p.key,
        "i": str(r.id),
        "at": r.aggregate_type,
        "ai": r.aggregate_id,
        "et": r.event_type,
        "tp": r.topic,
        "p": orjson.Fragment(r.payload_json),
        "h": p.row_headers(r),
    }


class GroupCommit:
    """Coalesces concurrent `submit`s into shared transactions (group commit).

    A request waits in a queue while up to `concurrency` transactions are running; each running
    transaction takes everything queued (at most `max_batch`). No request is answered before
    the transaction holding its write has committed. Under no load a request runs alone, at
    once; under load the per-transaction cost is shared by the whole batch.

    A batch that fails as a whole (a connection error, or a key held by another transaction
    past the pool's `lock_timeout`) is run again one request at a time, so one request's
    trouble is not its neighbours'.
    """

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool | None],
        *,
        retention_s: float,
        timeout_s: float,
        max_batch: int = 128,
        # One in flight: under load the next batch fills while it commits. A statement's
        # cost is mostly per batch, so fewer, fuller batches win (make bench-http, write path
        # alone, interleaved runs): against 2, batches of 7.9 / 15.4 requests instead of
        # 5.1 / 10.4 at c=16 / c=32, and 6-7% more requests/s on average over every run
        # (10-15% in short runs of the write path alone); 2 had beaten 4 likewise.
        concurrency: int = 1,
    ) -> None:
        self._pool = pool
        self.retention_s, self.timeout_s = retention_s, timeout_s
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
        options = {"retention_s": self.retention_s, "timeout_s": self.timeout_s}
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
