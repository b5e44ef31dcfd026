"""Topic names and declarations.

`atlas.payments.v1`, `atlas.outcomes.v1` and `atlas.dlq.v1` are external contracts; the rest
are internal. `ATLAS_TOPIC_PREFIX` namespaces all of them (empty in production; tests use it to
keep runs apart on a shared broker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from mode import Service

PAYMENTS = "atlas.payments.v1"
OUTCOMES = "atlas.outcomes.v1"
DLQ = "atlas.dlq.v1"
COMMANDS = "atlas.ledger.commands.v1"
LEGS = "atlas.ledger.legs.v1"
TRANSFER_EVENTS = "atlas.ledger.transfer-events.v1"


@dataclass(frozen=True)
class Topics:
    """The app's topics, all of raw bytes: Atlas encodes and decodes itself (`streams.wire`)."""

    payments: Any
    commands: Any
    legs: Any
    account_inputs: Any  # payments + commands + legs: one stream per account partition
    transfer_events: Any
    outcomes: Any
    dlq: Any

    def all(self) -> list[Any]:
        return [
            self.payments,
            self.commands,
            self.legs,
            self.transfer_events,
            self.outcomes,
            self.dlq,
        ]

    async def declare(self) -> None:
        """Create missing topics with the configured partitions and replication factor."""
        for topic in self.all():
            await topic.maybe_declare()


def define_topics(app: faust.App, prefix: str, partitions: int) -> Topics:
    def topic(*names: str) -> Any:
        return app.topic(
            *(prefix + n for n in names),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
            internal=True,  # Faust may create it, with our partitions and replication factor
        )

    return Topics(
        payments=topic(PAYMENTS),
        commands=topic(COMMANDS),
        legs=topic(LEGS),
        account_inputs=topic(PAYMENTS, COMMANDS, LEGS),
        transfer_events=topic(TRANSFER_EVENTS),
        outcomes=topic(OUTCOMES),
        dlq=topic(DLQ),
    )


class TopicDeclarer(Service):
    """Creates the app's topics when the worker starts (after the producer is up)."""

    def __init__(self, topics: Topics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topics = topics

    async def on_start(self) -> None:
        await self.topics.declare()
