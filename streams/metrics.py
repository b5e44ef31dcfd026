"""Stream-side metrics, on the process's one registry (`web.metrics.REGISTRY`)."""

from __future__ import annotations

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
