"""The HTTP write path end to end: authenticated POST -> outbox -> relay -> ledger -> reads."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from tests.integration.processes import Response, WorkerProcess, http, wait_until
from web.auth import create_client

pytestmark = pytest.mark.integration
Spawn = Callable[..., WorkerProcess]


def post(
    worker: WorkerProcess, path: str, body: Any, key: str | None, idem: str | None
) -> Response:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if idem:
        headers["Idempotency-Key"] = idem
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http("POST", worker.url + path, data=data, headers=headers)


def authed_get(worker: WorkerProcess, path: str, key: str) -> Response:
    return http("GET", worker.url + path, headers={"Authorization": f"Bearer {key}"})


def problem(r: Response, status: int, slug: str) -> None:
    assert r.status == status, (r.status, r.body)
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.json()["type"] == f"/problems/{slug}", r.json()


def test_writes_flow_through_the_outbox_into_the_ledger(spawn_worker: Spawn, api_key: str) -> None:
    prefix = f"w{uuid.uuid4().hex[:8]}."
    worker = spawn_worker(ATLAS_TOPIC_PREFIX=prefix, ATLAS_APP_NAME=f"atlas-{prefix[:-1]}")
    worker.wait_ready()

    opened = [
        post(
            worker,
            "/v1/accounts",
            {"owner_email": f"o{i}@example.com", "currency": "EUR", "account_id": f"http-{i}"},
            api_key,
            f"open-{i}",
        )
        for i in range(2)
    ]
    for r in opened:
        assert r.status == 202, r.body
        assert r.json()["status"] == "pending"
        assert r.headers["Location"] == f"/v1/accounts/{r.json()['account_id']}"

    def account(i: int) -> dict[str, Any] | None:
        r = authed_get(worker, f"/v1/accounts/http-{i}", api_key)
        return r.json() if r.status == 200 else None

    wait_until(lambda: account(0) and account(1), 30, what="accounts opened")

    # A transfer from an empty account is rejected by the ledger; the HTTP answer is 202.
    t = post(
        worker,
        "/v1/transfers",
        {"from_account": "http-0", "to_account": "http-1", "amount": 5, "currency": "EUR"},
        api_key,
        "t-1",
    )
    assert t.status == 202, t.body
    transfer_id = t.json()["transfer_id"]
    assert t.headers["Location"] == f"/v1/transfers/{transfer_id}"
    final = authed_get(worker, f"/v1/transfers/{transfer_id}?wait=20", api_key)
    assert final.status == 200, final.body
    assert (final.json()["status"], final.json()["reason"]) == ("rejected", "insufficient funds")

    # The same key and body replays the first answer; the event id is fixed by it.
    again = post(
        worker,
        "/v1/transfers",
        {"from_account": "http-0", "to_account": "http-1", "amount": 5, "currency": "EUR"},
        api_key,
        "t-1",
    )
    assert again.status == 202 and again.json() == t.json()
    assert again.headers["Idempotent-Replayed"] == "true"


def test_refusals_are_problem_json(spawn_worker: Spawn, api_key: str) -> None:
    worker = spawn_worker()
    worker.wait_ready()
    body = {"owner_email": "a@example.com", "currency": "EUR"}
    problem(post(worker, "/v1/accounts", body, None, "k"), 401, "unauthenticated")
    problem(post(worker, "/v1/accounts", body, "atl_" + "x" * 43, "k"), 401, "unauthenticated")
    problem(post(worker, "/v1/accounts", body, api_key, None), 400, "idempotency-key-missing")
    problem(post(worker, "/v1/accounts", b"{nope", api_key, "k-bad"), 400, "malformed-json")
    problem(
        post(worker, "/v1/accounts", {**body, "extra": 1}, api_key, "k-x"), 422, "invalid-request"
    )
    problem(
        post(worker, "/v1/accounts", {"currency": "EUR"}, api_key, "k-y"), 422, "invalid-request"
    )
    problem(
        post(
            worker,
            "/v1/transfers",
            {"from_account": "a", "to_account": "b", "amount": -1, "currency": "EUR"},
            api_key,
            "k-z",
        ),
        422,
        "invalid-request",
    )
    assert post(worker, "/v1/accounts", body, api_key, "k-1").status == 202
    problem(
        post(worker, "/v1/accounts", {**body, "currency": "USD"}, api_key, "k-1"),
        422,
        "idempotency-key-reused",
    )
    # Health and metrics need no credentials.
    assert worker.get("/health/live").status == 200
    assert worker.get("/metrics").status == 200


def test_a_client_over_its_rate_gets_429(spawn_worker: Spawn, database_url: str) -> None:
    async def make() -> str:
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            return (await create_client(conn, f"limited-{uuid.uuid4().hex[:8]}"))[1]
        finally:
            await conn.close()

    key = asyncio.run(make())
    worker = spawn_worker(ATLAS_RATE_LIMIT_PER_S="0.2", ATLAS_RATE_LIMIT_BURST="3")
    worker.wait_ready()
    answers = [authed_get(worker, "/v1/accounts/nobody", key) for _ in range(4)]
    assert [r.status for r in answers] == [404, 404, 404, 429]
    refused = answers[-1]
    assert refused.json()["type"] == "/problems/rate-limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert answers[0].headers["RateLimit-Limit"] == "3"
