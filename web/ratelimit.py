"""Per-client rate limiting: GCRA in Redis (one atomic Lua script), a local limiter as fallback.

GCRA keeps one number per client, the theoretical arrival time (TAT) of its next request: a
request is allowed while `TAT - now <= burst tolerance`, and each allowed request pushes TAT
one emission interval further. Redis holds the TAT so every worker shares one budget per
client; when Redis does not answer in time, each worker limits on its own (the same algorithm,
in memory) and keeps taking writes, and health reports Redis as `warn`.

A busy client's permits are leased: when a worker goes to Redis for a client whose last lease
it spent before the lease ran out, it asks for twice as many permits ahead as that lease
served (at most `rate x lease_s`), and spends them on the client's next requests without a
round trip.
Redis grants only what GCRA allows, so no client ever gets more than its rate; a lease not
spent within `lease_s` lapses, and its permits are lost to the client (the cost of leasing).
A client that is not busy never gets more than it asks for. `lease_s = 0` turns leasing off.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from aiohttp import web
from prometheus_client import Counter, Histogram
from redis.exceptions import NoScriptError

from streams.resilience import BreakerOpen, Breakers
from web.coalesce import Coalescer
from web.metrics import REGISTRY
from web.problems import problem_response

Limiter = Literal["redis", "lease", "local"]
DECISIONS = Counter(
    "atlas_rate_limit_decisions",
    "Rate-limit decisions, by where they were made (redis; lease: permits Redis granted"
    " ahead; local: without Redis) and outcome (allowed, or refused with 429).",
    ["limiter", "outcome"],
    registry=REGISTRY,
)
# One child per (limiter, allowed), made once: every series is there from the start, and
# counting a decision costs no label lookup.
_DECIDED = {
    (limiter, allowed): DECISIONS.labels(limiter, "allowed" if allowed else "refused")
    for limiter in get_args(Limiter)
    for allowed in (True, False)
}

REDIS_DURATION = Histogram(
    "atlas_redis_operation_duration_seconds",
    "Redis calls that answered, by operation.",
    ["operation"],
    registry=REGISTRY,
    buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REDIS_ERRORS = Counter(
    "atlas_redis_errors",
    "Redis calls that failed or timed out, by operation.",
    ["operation"],
    registry=REGISTRY,
)

# KEYS: one TAT key per client; ARGV: emission interval (ms), burst tolerance (ms), then the
# permits wanted for each key. Returns three numbers per key: permits granted (at most those
# wanted, as many as GCRA allows now), wait (ms) until the next permit when fewer were granted,
# and the permits remaining once the granted ones are spent. Redis's own clock, so every
# worker measures time the same way. (On Redis Cluster the keys of one call would need a
# common hash tag.)
GCRA_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local out = {}
for i, key in ipairs(KEYS) do
  local want = tonumber(ARGV[i + 2])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local free = math.floor((now + tolerance - tat) / interval) + 1
  local granted = math.max(0, math.min(want, free))
  if granted > 0 then
    tat = tat + granted * interval
    redis.call('SET', key, tat, 'PX', math.ceil(tat - now + interval))
  end
  local wait = 0
  if granted < want then wait = tat - tolerance - now end
  out[#out + 1] = granted
  out[#out + 1] = wait
  out[#out + 1] = math.max(0, math.floor((tolerance - (tat - now)) / interval) + 1)
end
return out
"""
GCRA_SHA = hashlib.sha1(GCRA_LUA.encode()).hexdigest()  # EVALSHA: the script is sent once


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float
    remaining: int
    limiter: Limiter  # where it was decided


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: int

    @property
    def interval_ms(self) -> float:
        return 1000.0 / self.per_second

    @property
    def tolerance_ms(self) -> float:
        return self.interval_ms * (self.burst - 1)


def gcra(tat_ms: float, now_ms: float, rate: Rate) -> tuple[Decision, float]:
    """One GCRA step (pure): the decision and the new TAT."""
    tat = max(tat_ms, now_ms)
    allow_at = tat - rate.tolerance_ms
    if now_ms < allow_at:
        return Decision(False, (allow_at - now_ms) / 1000.0, 0, "local"), tat
    new_tat = tat + rate.interval_ms
    remaining = int((rate.tolerance_ms - (new_tat - now_ms)) // rate.interval_ms) + 1
    return Decision(True, 0.0, max(remaining, 0), "local"), new_tat


class LocalLimiter:
    """GCRA in memory, per worker: the fallback while Redis does not answer."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self._tat: dict[str, float] = {}

    def check(self, client: str) -> Decision:
        now = self.clock() * 1000.0
        decision, tat = gcra(self._tat.get(client, now), now, self.rate)
        if decision.allowed:
            self._tat[client] = tat
        if len(self._tat) > 100_000:  # forget idle clients rather than grow without bound
            self._tat = {c: t for c, t in self._tat.items() if t > now}
        return decision


@dataclass
class _Lease:
    """Permits Redis granted this worker for one client, spent here until `expires`."""

    permits: int  # left to spend
    remaining: int  # the client's remaining budget in Redis once these are spent
    expires: float
    served: int  # requests this lease has answered: the client's demand, for the next ask


class RateLimiter:
    """GCRA in Redis through Redis's circuit breaker; the local limiter while it is open.

    Concurrent checks share one script call (`web.coalesce`), with one key per client and the
    number of permits it needs: under load the Redis round trip is paid once per batch, not
    once per request, and a busy client's next requests are served from its lease. A batch
    Redis does not answer is decided by the local limiter, request by request.
    """

    def __init__(
        self,
        redis: Callable[[], Any],
        rate: Rate,
        timeout_s: float,
        breakers: Breakers | None = None,
        prefix: str = "atlas:rl:",
        max_batch: int = 256,
        lease_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis, self.rate, self.timeout_s, self.prefix = redis, rate, timeout_s, prefix
        self.breakers = breakers or Breakers()
        self.local = LocalLimiter(rate)
        self.redis_ok = True
        self.lease_s, self.clock = lease_s, clock
        # The most a lease holds: what the client may spend in lease_s (at least 1, at most
        # a batch), so a lapsed lease costs a client at most lease_s of its rate.
        self.lease_max = max(1, min(max_batch, int(rate.per_second * lease_s)))
        self._leases: dict[str, _Lease] = {}
        self._batches: Coalescer[str, Decision] = Coalescer(
            self._check_batch, max_batch=max_batch, concurrency=2
        )

    async def check(self, client: str) -> Decision:
        lease = self._leases.get(client)
        if lease is not None and lease.permits > 0 and lease.expires > self.clock():
            lease.permits -= 1
            lease.served += 1
            return Decision(True, 0.0, lease.remaining + lease.permits, "lease")
        if self._redis() is None:
            return self.local.check(client)
        return await self._batches.submit(client)

    def _ahead(self, client: str, now: float) -> int:
        """Permits to ask for beyond the waiting requests: twice the last lease's, if spent."""
        lease = self._leases.get(client)
        if lease is None or lease.permits > 0 or lease.expires <= now:
            return 0  # no lease yet, or it lapsed (with or without permits): not busy enough
        return min(self.lease_max, 2 * lease.served)

    async def _check_batch(self, clients: list[str]) -> list[Decision | Exception]:
        redis = self._redis()
        if redis is not None:
            waiting = collections.Counter(clients)  # in order of first arrival
            now = self.clock()
            wanted = [n + self._ahead(client, now) for client, n in waiting.items()]

            async def in_redis() -> Any:
                keys = [self.prefix + client for client in waiting]
                args = (len(keys), *keys, self.rate.interval_ms, self.rate.tolerance_ms, *wanted)
                async with asyncio.timeout(self.timeout_s):
                    try:
                        return await redis.evalsha(GCRA_SHA, *args)
                    except NoScriptError:  # a restarted Redis: EVAL caches the script again
                        return await redis.eval(GCRA_LUA, *args)

            started = time.perf_counter()
            try:
                flat = await self.breakers.call("redis", in_redis)
                REDIS_DURATION.labels("rate_limit").observe(time.perf_counter() - started)
                self.redis_ok = True
                return self._decide(clients, waiting, flat, now)
            except BreakerOpen:  # not asked: the breaker stands in for Redis
                self.redis_ok = False
            except Exception:  # down or slow: decide here instead
                REDIS_ERRORS.labels("rate_limit").inc()
                self.redis_ok = False
        return [self.local.check(client) for client in clients]

    def _decide(
        self, clients: list[str], waiting: collections.Counter[str], flat: list[Any], now: float
    ) -> list[Decision | Exception]:
        """Each waiting request's decision, in arrival order; permits left over are leased."""
        queues: dict[str, list[Decision]] = {}
        for (client, n), granted, wait_ms, remaining in zip(
            waiting.items(), flat[0::3], flat[1::3], flat[2::3], strict=True
        ):
            granted, remaining = int(granted), int(remaining)
            served = min(n, granted)
            # The j-th permit granted (from 1) leaves `remaining + granted - j` behind it.
            decisions = [
                Decision(True, 0.0, remaining + granted - j, "redis") for j in range(1, served + 1)
            ]
            refused = Decision(False, float(wait_ms) / 1000.0, 0, "redis")
            decisions += [refused] * (n - served)
            decisions.reverse()  # popped from the end, in arrival order
            queues[client] = decisions
            if granted and self.lease_s > 0:
                self._lease(client, granted - served, remaining, served, now)
        return [queues[client].pop() for client in clients]

    def _lease(self, client: str, permits: int, remaining: int, served: int, now: float) -> None:
        lease = self._leases.get(client)
        if lease is not None and lease.expires > now and lease.permits > 0:
            # Another batch's lease is still live: keep both, with Redis's newer remaining.
            lease.permits += permits
            lease.remaining, lease.served = remaining, lease.served + served
            return
        self._leases[client] = _Lease(permits, remaining, now + self.lease_s, served)
        if len(self._leases) > 100_000:  # forget lapsed leases rather than grow without bound
            self._leases = {c: v for c, v in self._leases.items() if v.expires > now}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rate_limit_middleware(
    limiter: RateLimiter, client_key: Callable[[web.Request], str | None]
) -> Any:
    """429 with Retry-After and RateLimit headers once a client spends its budget."""

    limit = str(limiter.rate.burst)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = client_key(request)
        if client is None:
            return await handler(request)
        decision = await limiter.check(client)
        _DECIDED[decision.limiter, decision.allowed].inc()
        if not decision.allowed:
            retry = max(1, int(decision.retry_after_s + 0.999))
            return problem_response(
                429,
                slug="rate-limited",
                detail="too many requests for this API client",
                instance=request.path,
                headers={
                    "RateLimit-Limit": limit,
                    "RateLimit-Remaining": "0",
                    "Retry-After": str(retry),
                },
            )
        response = await handler(request)
        response.headers["RateLimit-Limit"] = limit
        response.headers["RateLimit-Remaining"] = str(decision.remaining)
        return response

    return middleware
