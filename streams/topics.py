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

    def input_groups(self) -> list[tuple[str, ...]]:
        """The agents' inputs, each group read as one and time-ordered per partition number.

        In the order that breaks a tie of timestamps: an account's commands before its legs and
        payments (`streams.batches`).
        """
        ledger = (self.commands, self.legs, self.payments)
        return [
            tuple(t.get_topic_name() for t in ledger),
            (self.transfer_events.get_topic_name(),),
        ]

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


# An agent's queue holds batches (streams.batches), not records: a few are enough to keep it busy.
AGENT_QUEUE_BATCHES = 16


def define_topics(app: faust.App, prefix: str, partitions: int) -> Topics:
    # Imported here: this module's names are read by code (the CLI, the docs) that must not
    # pay for importing Faust's internals.
    from streams.batches import BatchTopic

    def topic(*names: str, read_by_an_agent: bool = False) -> Any:
        options: dict[str, Any] = {"maxsize": AGENT_QUEUE_BATCHES} if read_by_an_agent else {}
        return (BatchTopic if read_by_an_agent else faust.Topic)(
            app,
            topics=[prefix + n for n in names],
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
            internal=True,  # Faust may create it, with our partitions and replication factor
            **options,
        )

    return Topics(
        payments=topic(PAYMENTS),
        commands=topic(COMMANDS),
        legs=topic(LEGS),
        account_inputs=topic(PAYMENTS, COMMANDS, LEGS, read_by_an_agent=True),
        transfer_events=topic(TRANSFER_EVENTS, read_by_an_agent=True),
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
