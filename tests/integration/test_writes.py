"""The HTTP write path end to end: authenticated POST -> outbox -> relay -> ledger -> reads."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
import redis.asyncio

from streams.relay import RELAY_LOCK_ID
from tests.integration.processes import Response, WorkerProcess, http, wait_until
from tests.integration.stack import Stack, tag
from web.auth import create_client
from web.ratelimit import GCRA_LUA, Rate, RateLimiter

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
    prefix = f"w{tag()}."
    worker = spawn_worker(
        ATLAS_TOPIC_PREFIX=prefix,
        ATLAS_APP_NAME=f"atlas-{prefix[:-1]}",
        ATLAS_CENSUS_INTERVAL_S="0.5",
    )
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

    # Business metrics: the two accounts are counted open, the transfer as rejected.
    def sample(name: str) -> float | None:
        for line in worker.get("/metrics").body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    wait_until(
        lambda: sample('atlas_accounts{status="open"}') == 2, 15, what="two accounts counted open"
    )
    assert sample("atlas_accounts_opened_total") == 2
    assert sample('atlas_transfers_total{status="rejected"}') == 1


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
    key = asyncio.run(fresh_client(database_url))
    worker = spawn_worker(ATLAS_RATE_LIMIT_PER_S="0.2", ATLAS_RATE_LIMIT_BURST="3")
    worker.wait_ready()
    answers = [authed_get(worker, "/v1/accounts/nobody", key) for _ in range(4)]
    assert [r.status for r in answers] == [404, 404, 404, 429]
    refused = answers[-1]
    assert refused.json()["type"] == "/problems/rate-limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert answers[0].headers["RateLimit-Limit"] == "3"


async def fresh_client(url: str) -> str:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return (await create_client(conn, f"c-{uuid.uuid4().hex[:8]}"))[1]
    finally:
        await conn.close()


def test_oversized_bodies_get_413_and_slow_writes_504_and_a_retry_settles_once(
    spawn_worker: Spawn, make_database: Callable[[bool], str]
) -> None:
    url = make_database(True)
    key = asyncio.run(fresh_client(url))
    worker = spawn_worker(
        DATABASE_URL=url,
        ATLAS_MAX_BODY_BYTES="2048",
        ATLAS_REQUEST_DEADLINE_S="1",
        ATLAS_POSTGRES_TIMEOUT_S="5",
    )
    worker.wait_ready()
    body = {"owner_email": "slow@example.com", "currency": "EUR", "account_id": "slow-1"}
    big = {**body, "owner_email": "x" * 4000}
    problem(post(worker, "/v1/accounts", big, key, "big"), 413, "body-too-large")

    async def slow_outbox(on: bool) -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            if on:
                await conn.execute(
                    """
                    CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS
                    $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
                    CREATE TRIGGER slow BEFORE INSERT ON outbox
                    FOR EACH ROW EXECUTE FUNCTION slow_insert();
                    """
                )
            else:
                await conn.execute("DROP TRIGGER slow ON outbox")
        finally:
            await conn.close()

    asyncio.run(slow_outbox(True))
    started = time.monotonic()
    r = post(worker, "/v1/accounts", body, key, "slow-key")
    assert time.monotonic() - started < 2.5  # cut off at the deadline, not after the insert
    problem(r, 504, "deadline-exceeded")

    # The answer was cut off, not necessarily the write (it may commit later in its group):
    # a retry with the same key is answered 202 once the write is settled, and the write
    # exists exactly once.
    asyncio.run(slow_outbox(False))
    again = wait_until(
        lambda: (r := post(worker, "/v1/accounts", body, key, "slow-key")).status == 202 and r,
        timeout=10,
        what="202 for the retry",
    )
    assert again.json() == {"account_id": "slow-1", "status": "pending"}
    assert asyncio.run(_count(url, "SELECT count(*) FROM outbox")) == 1
    assert asyncio.run(_count(url, "SELECT count(*) FROM idempotency_keys")) == 1


async def _count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


@contextmanager
def relay_held(url: str) -> Iterator[None]:
    """While held, the relay's advisory lock is ours: no relay leads, nothing is published."""

    async def take() -> asyncpg.Connection:
        conn = await asyncpg.connect(url, timeout=10)
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_ID)
        return conn

    loop = asyncio.new_event_loop()
    holder = loop.run_until_complete(take())
    try:
        yield
    finally:
        loop.run_until_complete(holder.close())
        loop.close()


def test_writes_get_503_while_the_outbox_backlog_is_over_its_limit(
    spawn_worker: Spawn, make_database: Callable[[bool], str]
) -> None:
    url = make_database(True)
    key = asyncio.run(fresh_client(url))

    with relay_held(url):
        worker = spawn_worker(
            DATABASE_URL=url, ATLAS_OUTBOX_BACKLOG_LIMIT="3", ATLAS_OUTBOX_BACKLOG_POLL_S="0.2"
        )
        worker.api_key = key
        worker.wait_ready()

        def open_account(i: int) -> Response:
            body = {"owner_email": f"b{i}@example.com", "currency": "EUR"}
            return post(worker, "/v1/accounts", body, key, f"backlog-{i}")

        assert [open_account(i).status for i in range(3)] == [202, 202, 202]
        refused = wait_until(
            lambda: (r := open_account(3)).status == 503 and r, timeout=10, what="503"
        )
        problem(refused, 503, "outbox-backlog")
        assert int(refused.headers["Retry-After"]) >= 1
        check = worker.get("/health").json()["checks"]["outbox:backlog"][0]
        assert check["status"] == "warn" and "limit 3" in check["output"], check
        # Shedding starts at the first poll past the limit: a write may slip in before it.
        exposition = worker.get("/metrics").body.decode().splitlines()
        gauge = [line for line in exposition if line.startswith("atlas_outbox_backlog ")]
        assert gauge and 3 <= float(gauge[0].split()[1]) <= 4, gauge
        age = [
            line
            for line in exposition
            if line.startswith("atlas_outbox_oldest_unpublished_age_seconds ")
        ]
        assert age and float(age[0].split()[1]) > 0, age

    # The relay leads again, drains the outbox, and writes are taken again.
    wait_until(lambda: open_account(3).status == 202, timeout=20, what="202 after the drain")
    assert worker.get("/health").json()["checks"]["outbox:backlog"][0]["status"] == "pass"


def test_an_accepted_transfer_reads_as_pending_until_the_ledger_applies_it(
    spawn_worker: Spawn, make_database: Callable[[bool], str]
) -> None:
    url = make_database(True)
    key = asyncio.run(fresh_client(url))

    with relay_held(url):  # nothing is published meanwhile
        worker = spawn_worker(DATABASE_URL=url)
        worker.wait_ready()
        body = {"from_account": "p-1", "to_account": "p-2", "amount": 7, "currency": "EUR"}
        accepted = post(worker, "/v1/transfers", body, key, "pending-1")
        assert accepted.status == 202, accepted.body
        transfer_id = accepted.json()["transfer_id"]
        pending = authed_get(worker, accepted.headers["Location"], key)
        assert pending.status == 200, pending.body
        assert pending.json() == {
            "transfer_id": transfer_id,
            "status": "pending",
            "reason": None,
            **body,
        }
        missing = authed_get(worker, f"/v1/transfers/{uuid.uuid4()}", key)
        problem(missing, 404, "transfer-not-found")

    # The relay publishes it; the ledger rejects it (the accounts do not exist): final status.
    final = authed_get(worker, f"/v1/transfers/{transfer_id}?wait=25", key)
    assert final.status == 200, final.body
    assert final.json()["status"] == "rejected"


async def test_concurrent_checks_share_redis_calls_and_spend_the_budget_exactly(
    stack: Stack,
) -> None:
    client = redis.asyncio.from_url(stack.redis_url)
    limiter = RateLimiter(
        lambda: client, Rate(per_second=0.01, burst=5), timeout_s=2.0, prefix=f"t-{uuid.uuid4()}:"
    )
    calls = 0
    original = client.evalsha
    await client.script_load(GCRA_LUA)  # as after the first call of any worker

    async def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(*args)

    client.evalsha = counted  # type: ignore[method-assign]
    callers = ["a"] * 12 + ["b"] * 3
    try:
        decisions = await asyncio.gather(*(limiter.check(c) for c in callers))
    finally:
        await client.aclose()
    by_client = {
        c: [d for d, who in zip(decisions, callers, strict=True) if who == c] for c in "ab"
    }
    assert [d.allowed for d in by_client["a"]] == [True] * 5 + [False] * 7  # in arrival order
    assert [d.remaining for d in by_client["a"][:5]] == [4, 3, 2, 1, 0]
    assert all(d.allowed for d in by_client["b"])
    assert {d.limiter for d in decisions} == {"redis"}
    assert all(d.retry_after_s > 0 for d in by_client["a"][5:])
    assert calls == 1  # 15 checks made in one tick: one script call


async def test_leased_permits_come_from_the_script_and_never_exceed_the_budget(
    stack: Stack,
) -> None:
    client = redis.asyncio.from_url(stack.redis_url)
    # 20 at once, then one every 2 s; a lease may hold up to 20 permits (0.5/s x 40 s).
    limiter = RateLimiter(
        lambda: client,
        Rate(per_second=0.5, burst=20),
        timeout_s=2.0,
        prefix=f"t-{uuid.uuid4()}:",
        lease_s=40.0,
    )
    calls = 0
    original = client.evalsha
    await client.script_load(GCRA_LUA)

    async def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(*args)

    client.evalsha = counted  # type: ignore[method-assign]
    started = time.monotonic()
    try:
        decisions = [await limiter.check("a") for _ in range(30)]
    finally:
        await client.aclose()
    elapsed = time.monotonic() - started
    allowed = [d for d in decisions if d.allowed]
    assert elapsed < 2.0, "too slow for the counts below"  # less than one refill
    assert len(allowed) == 20 and decisions[:20] == allowed  # the burst, in order
    assert [d.remaining for d in allowed] == list(range(19, -1, -1))
    assert all(d.retry_after_s > 0 for d in decisions[20:])
    # Leases of 1, 3 and 7 permits, then the 9 the budget had left; each refusal asks again.
    assert calls == 4 + 10
    runs = [("redis", 2), ("lease", 2), ("redis", 1), ("lease", 6), ("redis", 1), ("lease", 8)]
    assert [d.limiter for d in decisions] == [s for s, n in runs for _ in range(n)] + ["redis"] * 10


async def test_two_workers_leasing_one_client_share_its_budget_exactly(stack: Stack) -> None:
    client = redis.asyncio.from_url(stack.redis_url)
    prefix = f"t-{uuid.uuid4()}:"
    # 20 at once, then one every 2 s; each worker may lease up to 20 permits ahead.
    workers = [
        RateLimiter(
            lambda: client,
            Rate(per_second=0.5, burst=20),
            timeout_s=2.0,
            prefix=prefix,
            lease_s=40.0,
        )
        for _ in range(2)
    ]
    started = time.monotonic()
    try:
        decisions = [await workers[i % 2].check("a") for i in range(60)]
    finally:
        await client.aclose()
    assert time.monotonic() - started < 2.0, "too slow for the count below"  # no refill
    # Permits one worker holds are not the other's: together they spend the budget once.
    assert sum(d.allowed for d in decisions) == 20
    assert (
        sum(d.allowed for d in decisions[0::2]) > 0 and sum(d.allowed for d in decisions[1::2]) > 0
    )
