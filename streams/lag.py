"""Consumer lag of a group, in messages, in seconds, and as a Burrow status.

Every `lag_poll_s` the worker's `LagMonitor` reads its own group's committed offsets and the
end offsets of the source topics, keeps a short history per partition, and publishes:

- `atlas_consumer_lag{group,topic,partition}`: messages behind, end offset minus committed
  offset (a partition without a committed offset counts from its beginning offset).
- `atlas_consumer_lag_seconds{group,topic,partition}`: time behind. The end-offset history
  is a line through (poll time, end offset) points; the time behind is `now` minus the moment
  that line crossed the committed offset (linear interpolation between the two samples around
  it). 0 when the lag is 0; never negative; capped at the history span (`now` minus the oldest
  sample) when the committed offset is older than the whole history.
- `atlas_consumer_lag_status{group,status}`: 1 for the group's current status, 0 for the
  others; status is one of OK, WARN, STOP, STALL, REWIND, ERR.

Statuses follow Burrow's evaluation rules (linkedin/Burrow, evaluator `caching.go`), per
partition over a window of the last `WINDOW` commits (offset, time, lag at that time):
with a current lag of 0 the partition is OK; otherwise it is STOP if the time since the last
commit exceeds the window's span and no recent end offset was at or below the last commit;
otherwise, if no commit in the window had lag 0: REWIND if an offset went backwards, STALL if
every commit has the same offset, WARN if the lag never decreased; else OK.

Two adaptations, because OffsetFetch shows offsets, not commits: a commit is recorded when the
committed offset changes, and at every poll while the group has live members (a live consumer
commits on its interval, and Kafka cannot tell a same-offset commit from none). STALL and WARN
compare consecutive commits, so they need two; Burrow would call a single lagging commit STALL.
The group's status is its partitions' worst (Burrow's order: OK < WARN < ERR < STOP < STALL <
REWIND); unlike Burrow, STOP, STALL and REWIND are kept rather than all shown as ERR, and ERR
means the offsets could not be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from mode import Service
from prometheus_client import Gauge

from streams import topics
from streams.kafka_metadata import OFFSETS_TOPIC, track_existing
from streams.logs import get_logger
from streams.settings import Settings
from web.metrics import REGISTRY

log = get_logger(__name__)

WINDOW = 10  # commits per partition the rules look at (Burrow's default `intervals`)
END_HISTORY = 120  # end-offset samples per partition: 10 minutes at the default poll
SOURCES = (topics.PAYMENTS, topics.COMMANDS, topics.LEGS, topics.TRANSFER_EVENTS)
_LIVE_STATES = {"Stable", "PreparingRebalance", "CompletingRebalance"}


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    ERR = "ERR"
    STOP = "STOP"
    STALL = "STALL"
    REWIND = "REWIND"


SEVERITY = {s: i for i, s in enumerate(Status)}  # Burrow's order, mildest first

LAG = Gauge(
    "atlas_consumer_lag",
    "Messages the group has not committed, per partition.",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
LAG_SECONDS = Gauge(
    "atlas_consumer_lag_seconds",
    "Estimated time the group is behind the partition's end, per partition.",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
LAG_STATUS = Gauge(
    "atlas_consumer_lag_status",
    "1 for the group's Burrow status (OK, WARN, STOP, STALL, REWIND, ERR), 0 for the others.",
    ["group", "status"],
    registry=REGISTRY,
)


def source_topics(prefix: str) -> list[str]:
    return [prefix + name for name in SOURCES]


def message_lag(committed: int | None, end: int, beginning: int) -> int:
    start = committed if committed is not None and committed >= 0 else beginning
    return max(end - start, 0)


def time_lag(position: int, ends: Sequence[tuple[float, int]], now: float) -> float:
    """Seconds since the end offset was at `position`, from (time, end offset) samples."""
    if not ends or position >= ends[-1][1]:
        return 0.0
    span = max(now - ends[0][0], 0.0)
    for (t1, e1), (t2, e2) in pairwise(ends):
        if e1 <= position < e2:
            crossed = t1 + (position - e1) / (e2 - e1) * (t2 - t1)
            return min(max(now - crossed, 0.0), span)
    return span  # older than the whole history


@dataclass(frozen=True)
class Commit:
    at: float
    offset: int
    lag: int


def partition_status(
    commits: Sequence[Commit], recent_ends: Sequence[int], lag: int, now: float
) -> Status:
    """Burrow's rules for one partition (see the module docstring)."""
    if not commits or lag == 0:
        return Status.OK
    first, last = commits[0], commits[-1]
    stopped = now - last.at > last.at - first.at
    if stopped and not any(end <= last.offset for end in recent_ends):
        return Status.STOP
    if any(c.lag == 0 for c in commits) or len(commits) < 2:
        return Status.OK
    if any(b.offset < a.offset for a, b in pairwise(commits)):
        return Status.REWIND
    if all(b.offset == a.offset for a, b in pairwise(commits)):
        return Status.STALL
    if all(b.lag >= a.lag for a, b in pairwise(commits)):
        return Status.WARN
    return Status.OK


def worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=SEVERITY.__getitem__, default=Status.OK)


@dataclass(frozen=True)
class Offsets:
    """One reading of a group's offsets on its topics; keys are (topic, partition)."""

    group: str
    live: bool  # the group has members
    committed: dict[tuple[str, int], int | None]
    ends: dict[tuple[str, int], int]
    beginnings: dict[tuple[str, int], int]


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    end: int
    lag: int
    lag_seconds: float
    status: Status

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "committed": self.committed,
            "end": self.end,
            "lag": self.lag,
            "lag_seconds": round(self.lag_seconds, 3),
            "status": str(self.status),
        }


@dataclass(frozen=True)
class LagReport:
    group: str
    status: Status
    partitions: list[PartitionLag]
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "group": self.group,
            "status": str(self.status),
            "lag": self.total,
            "partitions": [p.as_json() for p in self.partitions],
        }
        if self.error:
            body["error"] = self.error
        return body


@dataclass
class _History:
    ends: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=END_HISTORY))
    commits: deque[Commit] = field(default_factory=lambda: deque(maxlen=WINDOW))


class LagTracker:
    """Offsets readings in, lag reports out; keeps each partition's history. No I/O."""

    def __init__(self) -> None:
        self._history: dict[tuple[str, int], _History] = {}

    def observe(self, offsets: Offsets, now: float) -> LagReport:
        partitions = []
        for key in sorted(offsets.ends):
            end = offsets.ends[key]
            committed = offsets.committed.get(key)
            if committed is not None and committed < 0:
                committed = None
            lag = message_lag(committed, end, offsets.beginnings.get(key, 0))
            h = self._history.setdefault(key, _History())
            h.ends.append((now, end))
            if committed is not None:
                changed = not h.commits or h.commits[-1].offset != committed
                if changed or offsets.live:
                    h.commits.append(Commit(now, committed, lag))
            position = committed if committed is not None else end - lag
            recent_ends = [e for _, e in list(h.ends)[-WINDOW:]]
            partitions.append(
                PartitionLag(
                    topic=key[0],
                    partition=key[1],
                    committed=committed,
                    end=end,
                    lag=lag,
                    lag_seconds=time_lag(position, h.ends, now) if lag else 0.0,
                    status=partition_status(h.commits, recent_ends, lag, now),
                )
            )
        status = worst(p.status for p in partitions)
        return LagReport(offsets.group, status, partitions)


class OffsetsReader:
    """Reads a group's committed offsets and its topics' offsets with long-lived clients."""

    def __init__(self, bootstrap: str, timeout_s: float) -> None:
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        try:
            await admin.start()
            await consumer.start()
        except Exception:
            # A broker that is down fails either start half-way: close both, or each failed
            # poll would leave a consumer's connections behind ("Unclosed AIOKafkaConsumer").
            await consumer.stop()
            await admin.close()
            raise
        self._admin, self._consumer = admin, consumer
        # The admin client needs brokers and coordinators, not topics: its periodic refresh
        # asks for one small topic's metadata instead of the whole cluster's.
        await track_existing(admin._client, [OFFSETS_TOPIC])

    async def stop(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def read(self, group: str, topic_names: Sequence[str]) -> Offsets:
        if self._admin is None or self._consumer is None:
            await self.start()
        return await asyncio.wait_for(self._read(group, topic_names), self.timeout_s)

    async def _read(self, group: str, topic_names: Sequence[str]) -> Offsets:
        assert self._admin is not None and self._consumer is not None
        admin, consumer = self._admin, self._consumer
        # Fresh metadata of these topics only: a client tracking none would decode every topic's.
        await track_existing(consumer._client, topic_names)
        tps = [
            TopicPartition(t, p)
            for t in topic_names
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        committed = await admin.list_consumer_group_offsets(group, partitions=tps or None)
        ends = await consumer.end_offsets(tps) if tps else {}
        beginnings = await consumer.beginning_offsets(tps) if tps else {}
        described = await admin.describe_consumer_groups([group])
        states = [g[2] for response in described for g in response.groups]
        return Offsets(
            group=group,
            live=any(state in _LIVE_STATES for state in states),
            committed={
                (tp.topic, tp.partition): committed[tp].offset if tp in committed else None
                for tp in tps
            },
            ends={(tp.topic, tp.partition): ends[tp] for tp in tps},
            beginnings={(tp.topic, tp.partition): beginnings[tp] for tp in tps},
        )


def publish(report: LagReport) -> None:
    for p in report.partitions:
        labels = (report.group, p.topic, str(p.partition))
        LAG.labels(*labels).set(p.lag)
        LAG_SECONDS.labels(*labels).set(p.lag_seconds)
    for status in Status:
        LAG_STATUS.labels(report.group, str(status)).set(1 if status == report.status else 0)


class LagMonitor(Service):
    """Polls the worker's own group (and any watched ones) every `lag_poll_s`.

    `report` is the own group's latest reading; `reports` holds every watched group's.
    """

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.group = settings.app_name
        watched = [g.strip() for g in settings.lag_watch_groups.split(",") if g.strip()]
        self.groups = [self.group, *(g for g in watched if g != self.group)]
        self.topics = source_topics(settings.topic_prefix)
        self.reader = OffsetsReader(settings.kafka_bootstrap_servers, settings.kafka_timeout_s)
        self.trackers = {group: LagTracker() for group in self.groups}
        self.reports: dict[str, LagReport] = {}

    @property
    def report(self) -> LagReport | None:
        return self.reports.get(self.group)

    @Service.task
    async def _poll(self) -> None:
        while not self.should_stop:
            await self.refresh()
            await self.sleep(self.settings.lag_poll_s)

    async def refresh(self) -> None:
        for group in self.groups:
            await self._refresh(group)

    async def _refresh(self, group: str) -> None:
        try:
            offsets = await self.reader.read(group, self.topics)
        except Exception as exc:  # Kafka unreachable: the status says so, the worker goes on
            log.debug("consumer lag not measured", error=f"{type(exc).__name__}: {exc}")
            last = self.reports.get(group)
            error = f"{type(exc).__name__}: {exc}"[:300]
            self.reports[group] = LagReport(
                group, Status.ERR, last.partitions if last else [], error
            )
            with contextlib.suppress(Exception):
                await self.reader.stop()  # reconnect on the next poll
        else:
            self.reports[group] = self.trackers[group].observe(offsets, time.monotonic())
        publish(self.reports[group])

    async def on_stop(self) -> None:
        await self.reader.stop()
