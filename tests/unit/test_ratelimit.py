import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import NoScriptError

from web.metrics import REGISTRY
from web.middleware import MIDDLEWARES
from web.ratelimit import (
    GCRA_SHA,
    LocalLimiter,
    Rate,
    RateLimiter,
    gcra,
    rate_limit_middleware,
)


def test_gcra_allows_the_burst_then_one_request_per_interval() -> None:
    rate = Rate(per_second=10, burst=3)  # 100 ms apart, 3 at once
    tat, now = 0.0, 1000.0
    allowed = []
    for _ in range(4):
        decision, tat = gcra(tat, now, rate)
        allowed.append(decision.allowed)
    assert allowed == [True, True, True, False]
    refused, _ = gcra(tat, now, rate)
    assert refused.retry_after_s == pytest.approx(0.1)
    later, _ = gcra(tat, now + 100, rate)
    assert later.allowed


def test_remaining_counts_down() -> None:
    rate, tat = Rate(per_second=1, burst=3), 0.0
    seen = []
    for _ in range(3):
        decision, tat = gcra(tat, 5000.0, rate)
        seen.append(decision.remaining)
    assert seen == [2, 1, 0]


def test_the_local_limiter_keeps_clients_apart() -> None:
    now = [100.0]
    limiter = LocalLimiter(Rate(per_second=1, burst=1), clock=lambda: now[0])
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    assert limiter.check("b").allowed
    now[0] += 1.0
    assert limiter.check("a").allowed


class BrokenRedis:
    async def evalsha(self, *args: Any) -> Any:
        raise ConnectionError("redis is down")

    eval = evalsha


async def test_without_redis_the_local_limiter_decides() -> None:
    limiter = RateLimiter(lambda: BrokenRedis(), Rate(per_second=1, burst=2), timeout_s=0.1)
    decisions = [await limiter.check("client") for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert {d.limiter for d in decisions} == {"local"}
    assert limiter.redis_ok is False


class ForgetfulRedis:
    """A Redis that lost its script cache (restarted): EVALSHA fails until EVAL loads it."""

    def __init__(self) -> None:
        self.loaded = False
        self.calls: list[str] = []

    async def evalsha(self, sha: str, *args: Any) -> Any:
        self.calls.append("evalsha")
        if not self.loaded:
            raise NoScriptError("NOSCRIPT No matching script.")
        return [1, 0, 7]

    async def eval(self, script: str, *args: Any) -> Any:
        self.calls.append("eval")
        assert hashlib.sha1(script.encode()).hexdigest() == GCRA_SHA
        self.loaded = True
        return [1, 0, 8]


async def test_a_redis_without_the_script_gets_it_once() -> None:
    redis = ForgetfulRedis()
    limiter = RateLimiter(lambda: redis, Rate(per_second=1, burst=9), timeout_s=0.1)
    first, second = await limiter.check("c"), await limiter.check("c")
    assert (first.remaining, first.limiter) == (8, "redis")
    assert (second.remaining, second.limiter) == (7, "redis")
    assert redis.calls == ["evalsha", "eval", "evalsha"]


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    limiter = RateLimiter(lambda: None, Rate(per_second=1, burst=2), timeout_s=0.1)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(
        middlewares=[
            *MIDDLEWARES,
            rate_limit_middleware(limiter, lambda r: r.headers.get("X-Client")),
        ]
    )
    app.router.add_get("/v1/x", ok)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_429_is_problem_json_with_retry_after_and_ratelimit_headers(
    client: TestClient,
) -> None:
    first = await client.get("/v1/x", headers={"X-Client": "c1"})
    assert first.status == 200
    assert first.headers["RateLimit-Limit"] == "2"
    assert first.headers["RateLimit-Remaining"] == "1"
    await client.get("/v1/x", headers={"X-Client": "c1"})
    refused = await client.get("/v1/x", headers={"X-Client": "c1"})
    assert refused.status == 429
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await refused.json(content_type=None))["type"] == "/problems/rate-limited"
    assert (await client.get("/v1/x")).status == 200  # no client: not limited here


class GcraRedis:
    """The script's arithmetic in Python, on a clock the test moves: counts its calls."""

    def __init__(self, clock: list[float]) -> None:
        self.clock, self.tat, self.calls = clock, {}, 0
        self.wanted: list[list[int]] = []

    async def evalsha(self, sha: str, nkeys: int, *args: Any) -> list[float]:
        self.calls += 1
        keys, (interval, tolerance, *wants) = args[:nkeys], args[nkeys:]
        self.wanted.append(list(wants))
        now, out = self.clock[0] * 1000.0, []
        for key, want in zip(keys, wants, strict=True):
            tat = max(self.tat.get(key, now), now)
            free = max(0, int((now + tolerance - tat) // interval) + 1)
            granted = min(want, free)
            tat += granted * interval
            self.tat[key] = tat
            wait = tat - tolerance - now if granted < want else 0
            out += [granted, wait, max(0, int((tolerance - (tat - now)) // interval) + 1)]
        return out


async def test_a_busy_client_spends_a_lease_without_asking_redis() -> None:
    clock = [100.0]
    redis = GcraRedis(clock)
    rate = Rate(per_second=100, burst=1000)  # a lease holds at most 100 * 0.5 = 50 permits
    limiter = RateLimiter(lambda: redis, rate, timeout_s=1, lease_s=0.5, clock=lambda: clock[0])
    decisions = [await limiter.check("c") for _ in range(60)]
    assert all(d.allowed for d in decisions)
    # Each lease spent in time doubles the next one (1 request waiting + 2 x served ahead),
    # up to the cap: 1 + 50.
    assert redis.wanted == [[1], [3], [7], [15], [31], [51]]
    # One decision per script call came from Redis; the rest were spent from leases.
    assert [d.limiter for d in decisions].count("redis") == len(redis.wanted)
    assert [d.limiter for d in decisions].count("lease") == 60 - len(redis.wanted)
    # RateLimit-Remaining counts down through the leases as if each request asked Redis.
    assert [d.remaining for d in decisions] == list(range(999, 939, -1))


async def test_a_lapsed_lease_is_not_renewed_ahead_of_demand() -> None:
    clock = [100.0]
    redis = GcraRedis(clock)
    limiter = RateLimiter(
        lambda: redis,
        Rate(per_second=100, burst=1000),
        timeout_s=1,
        lease_s=0.5,
        clock=lambda: clock[0],
    )
    for _ in range(3):
        await limiter.check("c")
    assert redis.wanted == [[1], [3]]  # the last lease holds 2 permits, one spent
    clock[0] += 1.0  # the client goes quiet: its lease lapses
    await limiter.check("c")
    assert redis.wanted[-1] == [1]  # only what the request needs


async def test_leases_never_grant_more_than_the_rate() -> None:
    clock = [100.0]
    redis = GcraRedis(clock)
    rate = Rate(per_second=10, burst=5)
    limiter = RateLimiter(lambda: redis, rate, timeout_s=1, lease_s=1.0, clock=lambda: clock[0])
    allowed = 0
    for _ in range(200):  # 200 requests over 2 s, 10 ms apart
        allowed += (await limiter.check("c")).allowed
        clock[0] += 0.01
    assert allowed <= 5 + 10 * 2  # the burst, then the rate, however leases were sized


async def test_without_leasing_every_request_asks_redis() -> None:
    clock = [100.0]
    redis = GcraRedis(clock)
    limiter = RateLimiter(lambda: redis, Rate(per_second=100, burst=100), timeout_s=1)
    for _ in range(5):
        await limiter.check("c")
    assert redis.wanted == [[1]] * 5
    assert not limiter._leases  # nothing kept per client


def decided(limiter: str, outcome: str) -> float:
    labels = {"limiter": limiter, "outcome": outcome}
    return REGISTRY.get_sample_value("atlas_rate_limit_decisions_total", labels) or 0.0


async def test_every_decision_is_counted_by_limiter_and_outcome(client: TestClient) -> None:
    before = {o: decided("local", o) for o in ("allowed", "refused")}
    statuses = [(await client.get("/v1/x", headers={"X-Client": "c9"})).status for _ in range(3)]
    assert statuses == [200, 200, 429]  # a burst of 2, decided locally (no Redis here)
    assert decided("local", "allowed") - before["allowed"] == 2
    assert decided("local", "refused") - before["refused"] == 1
