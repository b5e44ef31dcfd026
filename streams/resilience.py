"""Circuit breakers and bounded retries for the worker's dependencies.

One breaker per dependency (postgres, redis, kafka), shared by every caller in the worker.
After `threshold` transient failures in a row it opens: calls fail at once with `BreakerOpen`
instead of waiting on a dead dependency. After `reset_s` one call goes through (half-open); its
success closes the breaker, its failure opens it again. Only transient failures count
(connection errors and timeouts); an application error such as a unique violation is an answer,
not an outage.

The breakers are purgatory's (asyncio, in memory); this module adds the failure taxonomy, the
state in metrics and health, and `retrying`, which retries transient failures with exponential
backoff and full jitter (the `backoff` package) while the breaker stays closed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, cast

import asyncpg
import backoff
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError
from aiokafka.errors import RequestTimedOutError as KafkaRequestTimedOut
from prometheus_client import Counter, Gauge
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streams.logs import get_logger
from web.metrics import REGISTRY

log = get_logger(__name__)

Dependency = Literal["postgres", "redis", "kafka"]
DEPENDENCIES: tuple[Dependency, ...] = ("postgres", "redis", "kafka")
State = Literal["closed", "open", "half-open"]
_STATE_VALUE: dict[State, int] = {"closed": 0, "half-open": 1, "open": 2}
_PURGATORY_STATE: dict[str, State] = {
    "closed": "closed",
    "opened": "open",
    "half-opened": "half-open",
}

BREAKER_STATE = Gauge(
    "atlas_circuit_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
    ["dependency"],
    registry=REGISTRY,
)
BREAKER_TRANSITIONS = Counter(
    "atlas_circuit_breaker_transitions",
    "Circuit breaker state changes, by dependency and the state entered.",
    ["dependency", "state"],
    registry=REGISTRY,
)
BREAKER_REJECTED = Counter(
    "atlas_circuit_breaker_rejected_calls",
    "Calls refused at once because the dependency's breaker was open.",
    ["dependency"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "atlas_dependency_retries",
    "Retries of transient dependency failures, by dependency.",
    ["dependency"],
    registry=REGISTRY,
)

_TRANSIENT: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # the connection closed under the call
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.TooManyConnectionsError,
    # A pooled connection left mid-operation by a server going away (seen during a shutdown).
    asyncpg.exceptions.InternalClientError,
    RedisConnectionError,
    RedisTimeoutError,
    KafkaConnectionError,
    KafkaTimeoutError,
    KafkaRequestTimedOut,
    NodeNotReadyError,
)


TRANSIENT_ERRORS = _TRANSIENT


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying and counting against the dependency's breaker."""
    return isinstance(exc, _TRANSIENT)


class BreakerOpen(Exception):
    """The dependency's breaker is open: the call was not made."""

    def __init__(self, dependency: str, retry_after_s: float) -> None:
        super().__init__(f"{dependency} circuit breaker is open")
        self.dependency = dependency
        self.retry_after_s = retry_after_s


T = TypeVar("T")


class Breakers:
    """The worker's breakers, one per dependency; `start()` before the first call."""

    def __init__(self, threshold: int = 5, reset_s: float = 5.0) -> None:
        self.threshold, self.reset_s = threshold, reset_s
        self._factory = AsyncCircuitBreakerFactory(
            default_threshold=threshold,
            default_ttl=reset_s,
            exclude=[(Exception, lambda exc: not is_transient(exc))],
        )
        self._factory.add_listener(self._on_event)
        self._breakers: dict[str, Any] = {}
        self._retriers: dict[tuple[str, int, float, float], Any] = {}

    async def start(self) -> None:
        if self._breakers:
            return
        for dependency in DEPENDENCIES:
            self._breakers[dependency] = await self._factory.get_breaker(dependency)
            BREAKER_STATE.labels(dependency).set(0)

    def _on_event(self, name: str, event_type: str, event: Any) -> None:
        if event_type != "state_changed":
            return
        state = _PURGATORY_STATE.get(event.state, "open")
        BREAKER_STATE.labels(name).set(_STATE_VALUE[state])
        BREAKER_TRANSITIONS.labels(name, state).inc()
        log.warning("circuit breaker changed state", dependency=name, state=state)

    def state(self, dependency: Dependency) -> State:
        """The state a call made now would meet (an expired open breaker reads half-open)."""
        breaker = self._breakers.get(dependency)
        if breaker is None:
            return "closed"
        state = _PURGATORY_STATE.get(breaker.context.state, "open")
        if state == "open" and self.retry_after_s(dependency) == 0.0:
            return "half-open"
        return state

    def retry_after_s(self, dependency: Dependency) -> float:
        breaker = self._breakers.get(dependency)
        if breaker is None or breaker.context.state != "opened":
            return 0.0
        opened_at = float(breaker.context.opened_at or 0.0)
        return max(0.0, opened_at + self.reset_s - time.time())

    async def call(self, dependency: Dependency, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` through the dependency's breaker (no retry)."""
        breaker = self._breakers.get(dependency)
        if breaker is None:
            return await fn()
        try:
            async with breaker:
                return await fn()
        except OpenedState:
            BREAKER_REJECTED.labels(dependency).inc()
            raise BreakerOpen(dependency, self.retry_after_s(dependency)) from None

    async def observe(self, dependency: Dependency, error: BaseException | None) -> None:
        """Feed the outcome of a call made outside `call` (say, a batch publish) to the breaker."""

        async def outcome() -> None:
            if error is not None:
                raise error

        with contextlib.suppress(Exception):
            await self.call(dependency, outcome)

    async def retrying(
        self,
        dependency: Dependency,
        fn: Callable[[], Awaitable[T]],
        *,
        max_tries: int,
        max_time_s: float,
        first_delay_s: float = 0.05,
    ) -> T:
        """`call`, retrying transient failures with capped exponential backoff and full jitter.

        Bounded by `max_tries` and `max_time_s`; an open breaker ends the retries at once.
        """

        attempt = self._retriers.get((dependency, max_tries, max_time_s, first_delay_s))
        if attempt is None:
            attempt = self._retrier(dependency, max_tries, max_time_s, first_delay_s)
        return cast("T", await attempt(fn))

    def _retrier(
        self, dependency: Dependency, max_tries: int, max_time_s: float, first_delay_s: float
    ) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]:
        """The retrying call for one policy, decorated once (not on every call)."""

        def on_backoff(details: Any) -> None:
            RETRIES.labels(dependency).inc()

        @backoff.on_exception(
            backoff.expo,
            _TRANSIENT,
            max_tries=max_tries,
            max_time=max_time_s,
            jitter=backoff.full_jitter,
            factor=first_delay_s,
            on_backoff=on_backoff,
            logger=None,
        )
        async def attempt(fn: Callable[[], Awaitable[Any]]) -> Any:
            return await self.call(dependency, fn)

        self._retriers[(dependency, max_tries, max_time_s, first_delay_s)] = attempt
        return attempt
