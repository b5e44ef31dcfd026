"""Per-client rate limiting: GCRA in Redis (one atomic Lua script), a local limiter as fallback.

GCRA keeps one number per client, the theoretical arrival time (TAT) of its next request: a
request is allowed while `TAT - now <= burst tolerance`, and each allowed request pushes TAT
one emission interval further. Redis holds the TAT so every worker shares one budget per
client; when Redis does not answer in time, each worker limits on its own (the same algorithm,
in memory) and keeps taking writes, and health reports Redis as `warn`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram
from redis.exceptions import NoScriptError

from streams.resilience import BreakerOpen, Breakers
from web.coalesce import Coalescer
from web.metrics import REGISTRY
from web.problems import problem_response

RATE_LIMITED = Counter(
    "atlas_rate_limited",
    "Requests refused with 429, by where the decision was made (redis or local).",
    ["limiter"],
    registry=REGISTRY,
)
LIMITER_FALLBACKS = Counter(
    "atlas_rate_limiter_fallbacks",
    "Decisions made by the local limiter because Redis did not answer.",
    registry=REGISTRY,
)

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

# KEYS: one TAT key per request (a client may appear more than once, in arrival order);
# ARGV: emission interval (ms), burst tolerance (ms). Returns three numbers per key: allowed,
# wait (ms), remaining. Redis's own clock, so every worker measures time the same way.
# (On Redis Cluster the keys of one call would need a common hash tag.)
GCRA_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local out = {}
for _, key in ipairs(KEYS) do
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then
    out[#out + 1] = 0
    out[#out + 1] = allow_at - now
    out[#out + 1] = 0
  else
    local new_tat = tat + interval
    redis.call('SET', key, new_tat, 'PX', math.ceil(new_tat - now + interval))
    out[#out + 1] = 1
    out[#out + 1] = 0
    out[#out + 1] = math.floor((tolerance - (new_tat - now)) / interval) + 1
  end
end
return out
"""
GCRA_SHA = hashlib.sha1(GCRA_LUA.encode()).hexdigest()  # EVALSHA: the script is sent once


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float
    remaining: int
    limiter: str


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


class RateLimiter:
    """GCRA in Redis through Redis's circuit breaker; the local limiter while it is open.

    Concurrent checks share one script call (`web.coalesce`): under load the Redis round trip
    is paid once per batch, not once per request. A batch Redis does not answer is decided
    by the local limiter, request by request.
    """

    def __init__(
        self,
        redis: Callable[[], Any],
        rate: Rate,
        timeout_s: float,
        breakers: Breakers | None = None,
        prefix: str = "atlas:rl:",
        max_batch: int = 256,
    ) -> None:
        self._redis, self.rate, self.timeout_s, self.prefix = redis, rate, timeout_s, prefix
        self.breakers = breakers or Breakers()
        self.local = LocalLimiter(rate)
        self.redis_ok = True
        self._batches: Coalescer[str, Decision] = Coalescer(
            self._check_batch, max_batch=max_batch, concurrency=2
        )

    async def check(self, client: str) -> Decision:
        if self._redis() is None:
            LIMITER_FALLBACKS.inc()
            return self.local.check(client)
        return await self._batches.submit(client)

    async def _check_batch(self, clients: list[str]) -> list[Decision | Exception]:
        redis = self._redis()
        if redis is not None:

            async def in_redis() -> Any:
                keys = [self.prefix + client for client in clients]
                args = (len(keys), *keys, self.rate.interval_ms, self.rate.tolerance_ms)
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
                return [
                    Decision(bool(allowed), float(wait_ms) / 1000.0, int(remaining), "redis")
                    for allowed, wait_ms, remaining in zip(
                        flat[0::3], flat[1::3], flat[2::3], strict=True
                    )
                ]
            except BreakerOpen:  # not asked: the breaker stands in for Redis
                self.redis_ok = False
            except Exception:  # down or slow: decide here instead
                REDIS_ERRORS.labels("rate_limit").inc()
                self.redis_ok = False
        LIMITER_FALLBACKS.inc(len(clients))
        return [self.local.check(client) for client in clients]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rate_limit_middleware(
    limiter: RateLimiter, client_key: Callable[[web.Request], str | None]
) -> Any:
    """429 with Retry-After and RateLimit headers once a client spends its budget."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        client = client_key(request)
        if client is None:
            return await handler(request)
        decision = await limiter.check(client)
        headers = {
            "RateLimit-Limit": str(limiter.rate.burst),
            "RateLimit-Remaining": str(decision.remaining),
        }
        if not decision.allowed:
            RATE_LIMITED.labels(decision.limiter).inc()
            retry = max(1, int(decision.retry_after_s + 0.999))
            return problem_response(
                429,
                slug="rate-limited",
                detail="too many requests for this API client",
                instance=request.path,
                headers={**headers, "Retry-After": str(retry)},
            )
        response = await handler(request)
        response.headers.update(headers)
        return response

    return middleware
