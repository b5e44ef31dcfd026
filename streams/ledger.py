"""The ledger agent: payments, account commands and transfer legs, one batch at a time.

Per batch (the order correctness depends on):
1. decode each message; undecodable or invalid ones go to the dead-letter topic, and one found
   on a partition other than its key's murmur2 partition is re-published there, never applied;
2. fold each account's messages into at most one new record (`tables.ledger.fold`): the dedup
   marks ride in that record;
3. write each changed record once, then send the effects (outcomes, legs, transfer events);
4. return: the batch is acked, and the next commit waits until every record above is
   acknowledged by Kafka (`streams.kafka.SafeProducer.flush`) before moving the offsets.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streams import wire
from streams.context import current_event
from streams.kafka import Record, partition_for
from streams.logs import get_logger
from streams.metrics import (
    ACCOUNTS_CLOSED,
    ACCOUNTS_OPENED,
    BATCH_DURATION,
    BATCH_SIZE,
    EVENTS,
    MONEY_MOVED,
    TRANSFERS,
    count_consumed,
)
from streams.topics import Topics
from streams.tracing import bound_event, carried
from tables.ledger import Account, BatchResult, Limits, archive_key, fold
from tables.messages import (
    AccountMessage,
    AccountStatus,
    ChangeAccountStatus,
    CreditLeg,
    Effect,
    OpenAccount,
    Payment,
    PaymentOutcome,
    Position,
    RefundLeg,
    TransferEvent,
    TransferStatus,
)
from tables.store import LedgerTables

log = get_logger(__name__)


@dataclass
class LedgerProcessor:
    tables: LedgerTables
    topics: Topics
    limits: Limits
    partitions: int
    is_committed: Callable[[Position], bool]
    clock: Callable[[], float] = time.time
    # Decoded records of the accounts this worker processes, as it last wrote or read them.
    # The store changes under the cache only by changelog recovery, which happens only in a
    # rebalance: `forget` is called when one starts (AtlasApp.on_rebalance_start).
    # Archive segments are cached the same way (they are written once, rewritten unchanged
    # while pending, and deleted when they expire).
    cache_size: int = 100_000
    _cache: dict[str, Account] = field(default_factory=dict, init=False, repr=False)
    _segments: dict[bytes, Any] = field(default_factory=dict, init=False, repr=False)
    _home: dict[bytes, int] = field(
        default_factory=dict, init=False, repr=False
    )  # key -> partition

    def forget(self) -> None:
        self._cache.clear()
        self._segments.clear()

    def _decoder(self, topic: str) -> Callable[[bytes | None, bytes | None], AccountMessage]:
        return (
            wire.decode_payment
            if topic == self.topics.payments.get_topic_name()
            else wire.decode_command
        )

    async def process(self, events: list[Any]) -> None:
        started = time.perf_counter()
        count_consumed(events)
        by_account: dict[str, list[tuple[AccountMessage, Position, Any]]] = defaultdict(list)
        for event in events:
            message = event.message
            position = Position(message.topic, message.partition, message.offset)
            try:
                msg = self._decoder(message.topic)(message.key, message.value)
            except wire.BadMessage as bad:
                self.dead_letter(event, bad)
                continue
            expected = self._home.get(message.key)
            if expected is None:
                expected = partition_for(message.key, self.partitions)
                _bounded_put(self._home, message.key, expected, self.cache_size)
            if message.partition != expected:
                self.reroute(event, expected)
                continue
            by_account[msg.account_id].append((msg, position, event))

        now = self.clock()
        # The batch's effects by topic, sent in bulk once every state write is handed over.
        effects: dict[str, list[Record]] = defaultdict(list)
        for account_id, items in by_account.items():
            self._apply(account_id, items, now, effects)
        producer = self.topics.outcomes.app.producer
        for topic, records in effects.items():
            await producer.send_many(topic, records)
        BATCH_SIZE.labels("ledger").observe(len(events))
        BATCH_DURATION.labels("ledger").observe(time.perf_counter() - started)

    def _apply(
        self,
        account_id: str,
        items: list[tuple[AccountMessage, Position, Any]],
        now: float,
        effects: dict[str, list[Record]],
    ) -> None:
        accounts, archive = self.tables.accounts, self.tables.archive
        key = account_id.encode()
        account = self._cache.get(account_id)
        if account is None:
            raw = accounts.get(key)
            account = Account.from_json(raw) if raw is not None else None

        segments = self._segments

        def archived(acc: str, seq: int) -> Any:
            segment_key = archive_key(acc, seq).encode()
            if segment_key in segments:
                return segments[segment_key]
            segment = archive.get(segment_key)
            _bounded_put(segments, segment_key, segment, self.cache_size)
            return segment

        result = fold(
            account,
            [(msg, pos) for msg, pos, _ in items],
            limits=self.limits,
            archive_lookup=archived,
            is_committed=self.is_committed,
            now=now,
        )
        # 1. state: one record per account (marks and activity inside), archive segments.
        # The record is written even when nothing changed (a batch of replays): after a SIGKILL
        # the local RocksDB store can hold a write whose changelog record never reached Kafka,
        # and the replay that finds its marks must still put that state into the changelog.
        with current_event(items[-1][2]):
            if result.account is not None:
                accounts[key] = result.account.to_json()
                self._remember(account_id, result.account)
            for seq, segment in result.archive_writes.items():
                segment_key = archive_key(account_id, seq).encode()
                if segment is None:
                    archive.pop(segment_key, None)
                else:
                    archive[segment_key] = segment
                _bounded_put(segments, segment_key, segment, self.cache_size)
        # 2. effects, after the state they follow from.
        # One step per message, in order (`fold`): what a message causes carries its trace.
        for (_, _, event), step in zip(items, result.steps, strict=True):
            EVENTS.labels(step.position.topic, step.decision.value).inc()
            headers = carried(event) if step.effects else None
            for effect in step.effects:
                topic, record = self._record(effect, headers)
                effects[topic].append(record)
        count_business(result)

    def _remember(self, account_id: str, account: Account) -> None:
        _bounded_put(self._cache, account_id, account, self.cache_size)

    def _record(
        self, effect: Effect, headers: list[tuple[str, bytes]] | None
    ) -> tuple[str, Record]:
        """An effect as the topic it goes to and its record (key, value, headers)."""
        topics = self.topics
        match effect:
            case PaymentOutcome():
                return topics.outcomes.get_topic_name(), (
                    effect.event_id.encode(),
                    wire.encode_outcome(effect),
                    headers,
                )
            case TransferEvent():
                return topics.transfer_events.get_topic_name(), (
                    effect.transfer_id.encode(),
                    wire.encode_transfer_event(effect),
                    headers,
                )
            case CreditLeg() | RefundLeg():
                return topics.legs.get_topic_name(), (
                    effect.account_id.encode(),
                    wire.encode_command(effect),
                    headers,
                )
        raise TypeError(f"not an effect: {effect!r}")

    def dead_letter(self, event: Any, bad: wire.BadMessage) -> None:
        message = event.message
        headers = [
            ("error.type", bad.error_type.encode()),
            ("error.message", bad.message.encode()[:1000]),
            ("source.topic", message.topic.encode()),
            ("source.partition", str(message.partition).encode()),
            ("source.offset", str(message.offset).encode()),
        ]
        self.topics.dlq.send_soon(key=message.key, value=message.value, headers=headers)
        EVENTS.labels(message.topic, "dead_lettered").inc()
        with bound_event(event):
            log.warning(
                "dead-lettered",
                error_type=bad.error_type,
                reason=bad.message,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )

    def reroute(self, event: Any, partition: int) -> None:
        """Re-publish to the key's murmur2 partition (a producer used another partitioner)."""
        message = event.message
        headers = [
            *(message.headers or []),
            ("atlas.rerouted-from", str(message.partition).encode()),
        ]
        channel = (
            self.topics.payments if message.topic == self.topics.payments.get_topic_name() else None
        )
        if channel is None:  # internal topics are only written by Atlas, with murmur2
            self.dead_letter(
                event, wire.BadMessage("wrong_partition", "internal message on the wrong partition")
            )
            return
        channel.send_soon(
            key=message.key, value=message.value, partition=partition, headers=headers
        )
        EVENTS.labels(message.topic, "rerouted").inc()


def count_business(result: BatchResult) -> None:
    """Accounts opened and closed, money moved and transfers settled, from one account's batch."""
    for step in result.applied:
        match step.msg:
            case OpenAccount():
                ACCOUNTS_OPENED.inc()
            case ChangeAccountStatus(status=AccountStatus.CLOSED):
                ACCOUNTS_CLOSED.inc()
            case Payment(currency=currency, kind=kind, amount=amount):
                MONEY_MOVED.labels(currency, kind.value).inc(amount)
    for step in result.decided:  # a replay re-emits its effects: not counted again
        for effect in step.effects:
            if isinstance(effect, TransferEvent) and effect.status.final:
                TRANSFERS.labels(effect.status.value).inc()
                if effect.status is TransferStatus.COMPLETED:
                    MONEY_MOVED.labels(effect.currency, "transfer").inc(effect.amount)


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Insert as the newest entry; drop the oldest beyond `size`."""
    cache.pop(key, None)
    cache[key] = value
    if len(cache) > size:
        del cache[next(iter(cache))]
