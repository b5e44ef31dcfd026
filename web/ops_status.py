"""`GET /ops/status.json`: one worker's operational state in one document, for the `/ops` page.

Assembled on each request from what the worker already keeps in memory; nothing here calls
Kafka, PostgreSQL or Redis:

- `lag`: the lag monitor's latest reading (streams/lag.py), `null` until the first one;
- `backlog`: the outbox backlog service's last good reading (streams/backlog.py);
- `breakers`: each dependency's circuit-breaker state (streams/resilience.py);
- `dead_letters`: `atlas_events_total{outcome="dead_lettered"}` by source topic, counted by this
  worker process since it started (not cluster-wide, reset by a restart);
- `relay`: whether this worker's outbox relay holds the leader lock.

Like /health and /metrics the route is open: the document carries counts, states, topic names
and the consumer group's name, never a key, a password or a connection URL.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import Counter

from streams.lag import LagReport
from streams.metrics import EVENTS
from streams.resilience import DEPENDENCIES, Dependency, State

DEAD_LETTERED = "dead_lettered"


class LagSource(Protocol):
    @property
    def report(self) -> LagReport | None: ...


class BacklogSource(Protocol):
    @property
    def rows(self) -> int: ...
    @property
    def oldest_s(self) -> float: ...
    @property
    def failed(self) -> int: ...  # rows set aside as unpublishable
    @property
    def measured_at(self) -> float | None: ...  # monotonic
    @property
    def over_limit(self) -> bool: ...


class BreakerSource(Protocol):
    def state(self, dependency: Dependency) -> State: ...


class RelaySource(Protocol):
    @property
    def is_leader(self) -> bool: ...


def dead_letter_counts(counter: Counter = EVENTS) -> dict[str, int]:
    """Dead-lettered messages per source topic, from the events counter's samples."""
    counts: dict[str, int] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("outcome") == DEAD_LETTERED:
                topic = sample.labels["topic"]
                counts[topic] = counts.get(topic, 0) + int(sample.value)
    return dict(sorted(counts.items()))


class OpsStatus:
    """Builds the status document from the worker's services (fakes in unit tests)."""

    def __init__(
        self,
        *,
        lag: LagSource,
        backlog: BacklogSource,
        backlog_limit: int,
        breakers: BreakerSource,
        relay: RelaySource,
        dead_letters: Callable[[], Mapping[str, int]] = dead_letter_counts,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.lag, self.backlog, self.backlog_limit = lag, backlog, backlog_limit
        self.breakers, self.relay = breakers, relay
        self.dead_letters = dead_letters
        self.monotonic, self.now = monotonic, now

    def document(self) -> dict[str, Any]:
        report = self.lag.report
        measured_at = self.backlog.measured_at
        letters = dict(self.dead_letters())
        return {
            "generated_at": self.now().isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "lag": report.as_json() if report is not None else None,
            "backlog": {
                "rows": self.backlog.rows,
                "oldest_s": round(self.backlog.oldest_s, 3),
                "failed": self.backlog.failed,
                "limit": self.backlog_limit,
                "shedding": self.backlog.over_limit,
                "reading_age_s": (
                    None
                    if measured_at is None
                    else round(max(self.monotonic() - measured_at, 0.0), 3)
                ),
            },
            "breakers": {dep: self.breakers.state(dep) for dep in DEPENDENCIES},
            "dead_letters": {"total": sum(letters.values()), "by_topic": letters},
            "relay": {"leader": self.relay.is_leader},
        }
