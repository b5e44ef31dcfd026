"""The ledger agent: payments, account commands and transfer legs, one batch at a time.

A batch is one input partition's records of one fetch, released in time order across the
three co-partitioned inputs (`streams.batches`). Per batch (the order correctness depends on):
1. decode each record (msgspec; pydantic only to word an error); undecodable or invalid ones
   go to the dead-letter topic, and one found on a partition other than its key's murmur2
   partition is re-published there, never applied;
2. fold each account's messages into at most one new record (`tables.ledger.fold`), the dedup
   marks inside it; archived marks are found through an index (`ArchiveIndex`), one look-up
   per event however long the dedup horizon;
3. **state**: each partition's changed records are written to its local store as one RocksDB
   `WriteBatch` (`tables.store.PartitionStore`);
4. **changelog and effects**: the same bytes go to the changelog partition as one send, and
   the persisted offset is set once Kafka acknowledged them; then the outcomes, legs and
   transfer events, in bulk;
5. return: the batch is acked, and the next commit waits until every record above is
   acknowledged by Kafka (`streams.kafka.SafeProducer.flush`) before moving the offsets.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams import failpoints, wire
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
from tables.ledger import Account, ArchiveIndex, BatchResult, Limits, archive_key, fold
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
from tables.store import LedgerTables, PartitionStore

log = get_logger(__name__)


def _changelog_acked() -> None:
    failpoints.reach("ledger.changelog-acked")


Writes = dict[int, list[tuple[bytes, bytes | None]]]  # partition -> (key, JSON value or None)


@dataclass
class LedgerProcessor:
    tables: LedgerTables
    topics: Topics
    limits: Limits
    partitions: int
    is_committed: Callable[[Position], bool]
    clock: Callable[[], float] = time.time
    # Decoded records of the accounts this worker processes, as it last wrote or read them, and
    # the archive index. The store changes under them only by changelog recovery, which happens
    # only in a rebalance: `forget` is called when one starts (AtlasApp.on_rebalance_start).
    cache_size: int = 100_000
    _cache: dict[str, Account] = field(default_factory=dict, init=False, repr=False)
    _home: dict[bytes, int] = field(
        default_factory=dict, init=False, repr=False
    )  # key -> partition
    _stores: tuple[PartitionStore, PartitionStore] | None = field(
        default=None, init=False, repr=False
    )
    _index: ArchiveIndex = field(init=False, repr=False)
    _names: tuple[str, str, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = ArchiveIndex(self._segment, self.cache_size)

    def forget(self) -> None:
        self._cache.clear()
        self._index.forget()

    def _segment(self, account_id: str, seq: int) -> Any:
        _, archive = self._open()
        key = archive_key(account_id, seq).encode()
        return archive.get(partition_for(account_id.encode(), self.partitions), key)

    def _open(self) -> tuple[PartitionStore, PartitionStore]:
        if self._stores is None:
            self._stores = (
                PartitionStore(self.tables.accounts),
                PartitionStore(self.tables.archive),
            )
        return self._stores

    def _decoder(self, topic: str) -> Callable[[bytes | None, bytes | None], AccountMessage]:
        return (
            wire.decode_payment
            if topic == self.topics.payments.get_topic_name()
            else wire.decode_command
        )

    async def process(self, records: Sequence[Any]) -> None:
        if not records:
            return
        started = time.perf_counter()
        count_consumed(records)
        by_account: dict[str, list[tuple[AccountMessage, Position, Any]]] = defaultdict(list)
        decoders: dict[str, Callable[[bytes | None, bytes | None], AccountMessage]] = {}
        home, partitions = self._home, self.partitions
        for record in records:
            topic = record.topic
            decode = decoders.get(topic)
            if decode is None:
                decode = decoders[topic] = self._decoder(topic)
            try:
                msg = decode(record.key, record.value)
            except wire.BadMessage as bad:
                self.dead_letter(record, bad)
                continue
            key = record.key
            expected = home.get(key)
            if expected is None:
                expected = partition_for(key, partitions)
                _bounded_put(home, key, expected, self.cache_size)
            if record.partition != expected:
                self.reroute(record, expected)
                continue
            by_account[msg.account_id].append(
                (msg, Position(topic, record.partition, record.offset), record)
            )

        now = self.clock()
        state: Writes = defaultdict(list)
        segments: Writes = defaultdict(list)
        effects: dict[str, list[Record]] = defaultdict(list)  # by topic, sent in bulk
        counted: Counter[tuple[str, str]] = Counter()
        tally = Tally()
        for account_id, items in by_account.items():
            self._apply(account_id, items, now, state, segments, effects, counted, tally)
        for (topic, decision), n in counted.items():
            EVENTS.labels(topic, decision).inc(n)
        tally.count()

        accounts, archive = self._open()
        # 1. state: each partition's records in one write (the marks ride in the records).
        # A record is written even when nothing changed (a batch of replays): after a SIGKILL
        # the local store can hold a write whose changelog record never reached Kafka, and
        # the replay that finds its marks must still put that state into the changelog.
        for partition, writes in state.items():
            accounts.write(partition, writes)
        for partition, writes in segments.items():
            archive.write(partition, writes)
        failpoints.reach("ledger.state-written")
        # 2. the same bytes to the changelogs, then the effects, after the state they follow.
        # First the last batch's sends must be in aiokafka's hands: this batch was folded
        # while they waited for their request, and under a trickle of input the wait lets the
        # next batch grow instead of sending a request per record.
        producer = self.topics.outcomes.app.producer
        await producer.appended()
        for partition, writes in state.items():
            await accounts.send_changelog(producer, partition, writes, _changelog_acked)
        for partition, writes in segments.items():
            await archive.send_changelog(producer, partition, writes)
        for topic, outputs in effects.items():
            await producer.send_many(topic, outputs)
        BATCH_SIZE.labels("ledger").observe(len(records))
        BATCH_DURATION.labels("ledger").observe(time.perf_counter() - started)

    def _apply(
        self,
        account_id: str,
        items: list[tuple[AccountMessage, Position, Any]],
        now: float,
        state: Writes,
        segments: Writes,
        effects: dict[str, list[Record]],
        counted: Counter[tuple[str, str]],
        tally: Tally,
    ) -> None:
        key = account_id.encode()
        partition = items[-1][1].partition
        account = self._cache.get(account_id)
        if account is None:
            raw = self._open()[0].get(partition, key)
            account = Account.from_json(raw) if raw is not None else None
        result = fold(
            account,
            [(msg, pos) for msg, pos, _ in items],
            limits=self.limits,
            archive=self._index,
            is_committed=self.is_committed,
            now=now,
        )
        if result.account is not None:
            state[partition].append((key, orjson.dumps(result.account.to_json())))
            _bounded_put(self._cache, account_id, result.account, self.cache_size)
        for seq, segment in result.archive_writes.items():
            segments[partition].append(
                (
                    archive_key(account_id, seq).encode(),
                    None if segment is None else orjson.dumps(segment),
                )
            )
        # One step per message, in order (`fold`): what a message causes carries its trace.
        for (_, _, record), step in zip(items, result.steps, strict=True):
            counted[step.position.topic, step.decision] += 1  # a StrEnum: its value
            if not step.effects:
                continue
            headers = carried(record)
            for effect in step.effects:
                topic, output = self._record(effect, headers)
                effects[topic].append(output)
        count_business(result, tally)

    def _record(
        self, effect: Effect, headers: list[tuple[str, bytes]] | None
    ) -> tuple[str, Record]:
        """An effect as the topic it goes to and its record (key, value, headers)."""
        names = self._names
        if names is None:
            t = self.topics
            names = self._names = tuple(
                x.get_topic_name() for x in (t.outcomes, t.transfer_events, t.legs)
            )
        match effect:
            case PaymentOutcome():
                return names[0], (
                    effect.event_id.encode(),
                    wire.encode_outcome(effect),
                    headers,
                )
            case TransferEvent():
                return names[1], (
                    effect.transfer_id.encode(),
                    wire.encode_transfer_event(effect),
                    headers,
                )
            case CreditLeg() | RefundLeg():
                return names[2], (
                    effect.account_id.encode(),
                    wire.encode_command(effect),
                    headers,
                )
        raise TypeError(f"not an effect: {effect!r}")

    def dead_letter(self, message: Any, bad: wire.BadMessage) -> None:
        headers = [
            ("error.type", bad.error_type.encode()),
            ("error.message", bad.message.encode()[:1000]),
            ("source.topic", message.topic.encode()),
            ("source.partition", str(message.partition).encode()),
            ("source.offset", str(message.offset).encode()),
        ]
        self.topics.dlq.send_soon(key=message.key, value=message.value, headers=headers)
        EVENTS.labels(message.topic, "dead_lettered").inc()
        with bound_event(message):
            log.warning(
                "dead-lettered",
                error_type=bad.error_type,
                reason=bad.message,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
            )

    def reroute(self, message: Any, partition: int) -> None:
        """Re-publish to the key's murmur2 partition (a producer used another partitioner)."""
        headers = [
            *(message.headers or []),
            ("atlas.rerouted-from", str(message.partition).encode()),
        ]
        channel = (
            self.topics.payments if message.topic == self.topics.payments.get_topic_name() else None
        )
        if channel is None:  # internal topics are only written by Atlas, with murmur2
            self.dead_letter(
                message,
                wire.BadMessage("wrong_partition", "internal message on the wrong partition"),
            )
            return
        channel.send_soon(
            key=message.key, value=message.value, partition=partition, headers=headers
        )
        EVENTS.labels(message.topic, "rerouted").inc()


def count_business(result: BatchResult, tally: Tally | None = None) -> None:
    """Accounts opened and closed, money moved and transfers settled, from one account's batch.

    Counted into `tally` (the metrics are increased once per batch), or straight away.
    """
    t = Tally() if tally is None else tally
    for step in result.applied:
        match step.msg:
            case OpenAccount():
                t.opened += 1
            case ChangeAccountStatus(status=AccountStatus.CLOSED):
                t.closed += 1
            case Payment(currency=currency, kind=kind, amount=amount):
                t.money[currency, kind] += amount
    for step in result.decided:  # a replay re-emits its effects: not counted again
        for effect in step.effects:
            if isinstance(effect, TransferEvent) and effect.status.final:
                t.transfers[effect.status] += 1
                if effect.status is TransferStatus.COMPLETED:
                    t.money[effect.currency, "transfer"] += effect.amount
    if tally is None:
        t.count()


@dataclass
class Tally:
    """A batch's business metrics, added up before the counters are increased once."""

    opened: int = 0
    closed: int = 0
    money: Counter[tuple[str, str]] = field(default_factory=Counter)
    transfers: Counter[str] = field(default_factory=Counter)

    def count(self) -> None:
        if self.opened:
            ACCOUNTS_OPENED.inc(self.opened)
        if self.closed:
            ACCOUNTS_CLOSED.inc(self.closed)
        for (currency, kind), amount in self.money.items():
            MONEY_MOVED.labels(currency, kind).inc(amount)
        for status, n in self.transfers.items():
            TRANSFERS.labels(status).inc(n)


def _bounded_put(cache: dict[Any, Any], key: Any, value: Any, size: int) -> None:
    """Insert as the newest entry; drop the oldest beyond `size`."""
    cache.pop(key, None)
    cache[key] = value
    if len(cache) > size:
        del cache[next(iter(cache))]
