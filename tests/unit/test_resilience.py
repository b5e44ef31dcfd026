import asyncio
import time
from typing import Any

import asyncpg
import pytest

from streams.resilience import BreakerOpen, Breakers, is_transient
from web.metrics import REGISTRY
from web.ratelimit import Rate, RateLimiter


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Flaky:
    """Fails with `error` the first `failures` calls, then answers "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def started(threshold: int = 3, reset_s: float = 0.2) -> Breakers:
    breakers = Breakers(threshold=threshold, reset_s=reset_s)
    await breakers.start()
    return breakers


def test_transient_failures_are_outages_and_answers_are_not() -> None:
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    assert is_transient(asyncpg.exceptions.AdminShutdownError())
    assert not is_transient(asyncpg.exceptions.UniqueViolationError())
    assert not is_transient(ValueError())


async def test_breaker_opens_after_threshold_transient_failures_and_fails_fast() -> None:
    breakers = await started(threshold=3, reset_s=30)
    down = Flaky(100, ConnectionRefusedError("postgres is down"))
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            await breakers.call("postgres", down)
    assert breakers.state("postgres") == "open"
    assert sample("atlas_circuit_breaker_state", dependency="postgres") == 2
    with pytest.raises(BreakerOpen) as refused:
        await breakers.call("postgres", down)
    assert down.calls == 3  # the fourth call never reached the dependency
    assert 29 < refused.value.retry_after_s <= 30
    assert breakers.state("redis") == "closed"  # one breaker per dependency


async def test_application_errors_do_not_open_the_breaker() -> None:
    breakers = await started(threshold=2)
    conflict = Flaky(100, asyncpg.exceptions.UniqueViolationError("duplicate key"))
    for _ in range(5):
        with pytest.raises(asyncpg.exceptions.UniqueViolationError):
            await breakers.call("postgres", conflict)
    assert breakers.state("postgres") == "closed"


async def test_half_open_trial_closes_on_success_and_reopens_on_failure() -> None:
    breakers = await started(threshold=1, reset_s=0.05)
    with pytest.raises(OSError):
        await breakers.call("kafka", Flaky(1, OSError("unreachable")))
    assert breakers.state("kafka") == "open"
    await asyncio.sleep(0.06)
    assert breakers.state("kafka") == "half-open"
    with pytest.raises(OSError):
        await breakers.call("kafka", Flaky(1, OSError("still unreachable")))
    assert breakers.state("kafka") == "open"
    await asyncio.sleep(0.06)
    assert await breakers.call("kafka", Flaky(0, OSError())) == "ok"
    assert breakers.state("kafka") == "closed"
    assert sample("atlas_circuit_breaker_state", dependency="kafka") == 0


async def test_retrying_recovers_from_a_transient_failure() -> None:
    breakers = await started(threshold=5)
    before = sample("atlas_dependency_retries_total", dependency="postgres")
    blip = Flaky(2, ConnectionResetError("reset"))
    assert await breakers.retrying("postgres", blip, max_tries=3, max_time_s=5) == "ok"
    assert blip.calls == 3
    assert sample("atlas_dependency_retries_total", dependency="postgres") == before + 2


async def test_retrying_is_bounded_and_never_retries_an_answer() -> None:
    breakers = await started(threshold=50)
    down = Flaky(100, ConnectionRefusedError())
    with pytest.raises(ConnectionRefusedError):
        await breakers.retrying("postgres", down, max_tries=3, max_time_s=5)
    assert down.calls == 3
    answer = Flaky(100, ValueError("bad request"))
    with pytest.raises(ValueError):
        await breakers.retrying("postgres", answer, max_tries=3, max_time_s=5)
    assert answer.calls == 1


async def test_retrying_stops_at_once_when_the_breaker_opens() -> None:
    breakers = await started(threshold=2, reset_s=30)
    down = Flaky(100, ConnectionRefusedError())
    started_at = time.monotonic()
    with pytest.raises(BreakerOpen):
        await breakers.retrying("postgres", down, max_tries=10, max_time_s=5)
    assert down.calls == 2
    assert time.monotonic() - started_at < 2


class CountingRedis:
    def __init__(self) -> None:
        self.calls = 0

    async def evalsha(self, *args: Any) -> Any:
        self.calls += 1
        raise ConnectionError("redis is down")


async def test_limiter_skips_redis_while_its_breaker_is_open() -> None:
    breakers = await started(threshold=2, reset_s=30)
    redis = CountingRedis()
    limiter = RateLimiter(lambda: redis, Rate(per_second=100, burst=100), 0.1, breakers)
    decisions = [await limiter.check("client") for _ in range(10)]
    assert all(d.allowed and d.limiter == "local" for d in decisions)
    assert redis.calls == 2  # then the breaker opened and Redis was left alone
    assert breakers.state("redis") == "open"
