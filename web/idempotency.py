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

from streams.relay import CHANNEL as NOTIFY_CHANNEL


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


async def run_once(
    pool: asyncpg.Pool,
    *,
    client_id: uuid.UUID,
    key: str,
    request_fingerprint: bytes,
    retention_s: float,
    timeout_s: float,
    busy_wait_s: float,
    effect: Callable[[], Effect],
) -> Result:
    async with pool.acquire(timeout=timeout_s) as conn, conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{int(busy_wait_s * 1000)}ms'")
        try:
            claimed = await conn.fetchval(
                """
                INSERT INTO idempotency_keys
                    (client_id, idempotency_key, fingerprint, state, expires_at)
                VALUES ($1, $2, $3, 'in_flight', now() + make_interval(secs => $4))
                ON CONFLICT (client_id, idempotency_key) DO NOTHING
                RETURNING true
                """,
                client_id,
                key,
                request_fingerprint,
                retention_s,
                timeout=timeout_s,
            )
        except asyncpg.LockNotAvailableError:
            raise RequestInFlight(key) from None
        if not claimed:
            row = await conn.fetchrow(
                """
                SELECT fingerprint, state, response_status, response_body
                FROM idempotency_keys WHERE client_id = $1 AND idempotency_key = $2
                """,
                client_id,
                key,
                timeout=timeout_s,
            )
            if row is None:  # reaped between the two statements: the caller may retry
                raise RequestInFlight(key)
            if bytes(row["fingerprint"]) != request_fingerprint:
                raise KeyReusedForAnotherRequest(key)
            if row["state"] != "completed":
                raise RequestInFlight(key)
            return Result(row["response_status"], orjson.loads(row["response_body"]), replayed=True)

        done = effect()
        await conn.executemany(
            """
            INSERT INTO outbox
                (id, aggregate_type, aggregate_id, event_type, topic, payload, headers)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)
            """,
            [
                (
                    r.id,
                    r.aggregate_type,
                    r.aggregate_id,
                    r.event_type,
                    r.topic,
                    orjson.dumps(r.payload).decode(),
                    orjson.dumps(r.headers).decode(),
                )
                for r in done.rows
            ],
            timeout=timeout_s,
        )
        await conn.execute(
            """
            UPDATE idempotency_keys
            SET state = 'completed', resource_id = $3, response_status = $4,
                response_body = $5::jsonb
            WHERE client_id = $1 AND idempotency_key = $2
            """,
            client_id,
            key,
            done.resource_id,
            done.status,
            orjson.dumps(done.body).decode(),
            timeout=timeout_s,
        )
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL, timeout=timeout_s)
        return Result(done.status, done.body)
