"""Stream-side metrics, on the process's one registry (`web.metrics.REGISTRY`)."""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram

from web.metrics import REGISTRY

EVENTS = Counter(
    "atlas_events",
    "Messages processed by the ledger, by source topic and outcome "
    "(applied, duplicate, rejected, dead_lettered, rerouted).",
    ["topic", "outcome"],
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "atlas_agent_batch_duration_seconds",
    "Time an agent spends on one batch, by agent.",
    ["agent"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
BATCH_SIZE = Histogram(
    "atlas_agent_batch_size",
    "Messages in one agent batch, by agent.",
    ["agent"],
    registry=REGISTRY,
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
)
MESSAGES_CONSUMED = Counter(
    "atlas_messages_consumed",
    "Messages handed to an agent, by topic.",
    ["topic"],
    registry=REGISTRY,
)
MESSAGES_PRODUCED = Counter(
    "atlas_messages_produced",
    "Records sent by the worker's Faust producer (outcomes, legs, changelogs...), by topic.",
    ["topic"],
    registry=REGISTRY,
)

# Business metrics, counted where the ledger decides. A replay after a crash re-decides what
# the changelog had not recorded yet, so a few may be counted twice; never missed.
TRANSFERS = Counter(
    "atlas_transfers",
    "Transfers that reached a final status, by status (completed, rejected, reversed).",
    ["status"],
    registry=REGISTRY,
)
MONEY_MOVED = Counter(
    "atlas_money_moved",
    "Money moved, in minor units, by currency and kind (deposit, withdrawal, transfer).",
    ["currency", "kind"],
    registry=REGISTRY,
)
ACCOUNTS_OPENED = Counter("atlas_accounts_opened", "Accounts opened.", registry=REGISTRY)
ACCOUNTS_CLOSED = Counter("atlas_accounts_closed", "Accounts closed.", registry=REGISTRY)


def count_consumed(records: Iterable[Any]) -> None:
    topics = Counter_(r.topic for r in records)
    for topic, n in topics.items():
        MESSAGES_CONSUMED.labels(topic).inc(n)


INPUT_IDLE_EXPIRED = Counter(
    "atlas_input_idle_expired",
    "Times a task (one partition of the co-partitioned inputs) waited ATLAS_INPUT_IDLE_MS for "
    "an input partition that lagged with nothing fetched, then went ahead without it.",
    registry=REGISTRY,
)


PRODUCER_BUFFER_FULL = Counter(
    "atlas_producer_buffer_full",
    "Times Faust's send buffer held back message delivery until it drained (its flow control; "
    "logged at most once a minute, see streams.logs.ProducerBufferFull).",
    registry=REGISTRY,
)
