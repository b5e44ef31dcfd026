"""The agents, run through Faust's `Agent.test_context()`: no broker, the real agent bodies.

`test_context()` clones an agent onto an in-memory channel and starts its real body, so what
runs here is `streams.agents` -> one event per batch -> the processors -> bulk table writes
(`tables.store.PartitionStore`, changelog records included) -> the sends.

Three things stand in for the broker, each for a concrete reason:

- Messages are built as real `faust.types.tuples.Message`s and put on the test channel
  (`Harness.deliver`) instead of through `AgentTestWrapper.put`. `put` names a message's topic
  after the agent's channel, and the ledger agent reads three topics at once (payments,
  commands, legs): `Topic.get_topic_name()` raises for it, so `put` labels every message
  `<internal>` and the processor would decode payments as commands. Ours carry their real
  topic, partition and offset, which the dedup marks record.
- `Topic.maybe_declare` is an `AsyncMock`: declaring a topic would start a producer and
  connect to Kafka.
- `Topic.send_soon` (dead letters, re-routed payments) is wrapped by a recorder that still
  calls Faust's own: records land in the (never started) producer's buffer. The bulk path for
  a batch's changelog records and effects (outcomes, legs, transfer events),
  `SafeProducer.send_many`, is recorded instead of sent (it writes straight into aiokafka
  batches of a started producer), so the recorder sees every record the worker would produce.

A message delivered alone is a batch of one; `Harness.deliver_batch` puts a batch event as the
consumer's scheduler makes them. A batch is done when it is acked, after `process` returns.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import faust
import orjson
import pytest
from aiokafka.errors import NotLeaderForPartitionError
from aiokafka.structs import ConsumerRecord
from faust.exceptions import ProducerSendError
from faust.types import TP
from faust.types.tuples import Message

from streams.app import AtlasApp, create_app
from streams.batches import BatchMessage, RecordBatch
from streams.kafka import SafeProducer, partition_for
from streams.settings import Settings
from streams.topics import TopicDeclarer
from streams.wire import decode_command, decode_transfer_event, encode_command
from streams.wire import encode_transfer_event as encode_event
from tables.ledger import Account
from tables.messages import (
    CreditLeg,
    OpenAccount,
    RefundLeg,
    RequestTransfer,
    TransferEvent,
    TransferStatus,
)

PARTITIONS = 4
SETTLE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Sent:
    topic: str
    key: Any
    value: Any
    partition: int | None
    headers: Any


@dataclass
class Harness:
    app: AtlasApp
    agent: Any  # the agent's test wrapper
    sent: list[Sent]
    declare: mock.AsyncMock
    offsets: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))

    @property
    def topics(self) -> Any:
        return self.app.topics_

    async def deliver(
        self,
        topic: Any,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        offset: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp: float | None = None,
    ) -> Message:
        """Put one message, read from `topic` at (partition, offset), on the agent's channel.

        The partition defaults to the key's murmur2 partition; the offset to the next one.
        """
        name = topic.get_topic_name()
        if partition is None:
            partition = partition_for(key, PARTITIONS) if key else 0
        if offset is None:
            offset = self.offsets[name, partition]
        self.offsets[name, partition] = max(self.offsets[name, partition], offset + 1)
        message = Message(
            topic=name,
            partition=partition,
            offset=offset,
            timestamp=time.time() if timestamp is None else timestamp,
            timestamp_type=0,
            headers=headers or [],
            key=key,
            value=value,
            checksum=None,
            generation_id=self.app.consumer_generation_id,
        )
        channel = self.agent.stream().channel
        await channel.put(await channel.decode(message))
        return message

    async def deliver_batch(
        self, topic: Any, items: list[tuple[bytes, bytes]], *, partition: int | None = None
    ) -> Message:
        """Put one batch event on the agent's channel, as the consumer's scheduler makes them:
        consecutive records of one topic partition (`streams.batches`)."""
        name = topic.get_topic_name()
        if partition is None:
            partition = partition_for(items[0][0], PARTITIONS)
        records = []
        for key, value in items:
            offset = self.offsets[name, partition]
            self.offsets[name, partition] = offset + 1
            records.append(
                ConsumerRecord(
                    name,
                    partition,
                    offset,
                    int(time.time() * 1000),
                    0,
                    key,
                    value,
                    None,
                    len(key),
                    len(value),
                    (),
                )
            )
        tp = TP(name, partition)
        message = BatchMessage(tp, RecordBatch(tp, records, self.app.consumer_generation_id))
        channel = self.agent.stream().channel
        await channel.put(self.app.create_event(None, None, None, message))
        return message

    async def settle(self, *messages: Message) -> None:
        """Wait until the agent has finished the batches holding `messages`."""
        await eventually(lambda: all(m.acked for m in messages), "the batch to be acked")

    async def run(self, *deliveries: tuple[Any, bytes | None, bytes | None]) -> list[Message]:
        messages = [await self.deliver(*d) for d in deliveries]
        await self.settle(*messages)
        return messages

    def to(self, topic: Any) -> list[Sent]:
        name = topic if isinstance(topic, str) else topic.get_topic_name()
        return [s for s in self.sent if s.topic == name]

    def changelog(self, table: Any) -> list[Sent]:
        """The table's changelog records, their JSON values decoded."""
        return [
            replace(s, value=None if s.value is None else orjson.loads(s.value))
            for s in self.to(table.changelog_topic.get_topic_name())
        ]

    def account(self, account_id: str) -> Account | None:
        raw = self.app.ledger_tables.accounts.get(account_id.encode())
        return None if raw is None else Account.from_json(raw)

    def outcomes(self) -> list[dict[str, Any]]:
        return [orjson.loads(s.value) for s in self.to(self.topics.outcomes)]


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition`: acks and crashes have no awaitable signal in the test context."""
    step = 0.002
    for _ in range(int(SETTLE_TIMEOUT_S / step)):
        if condition():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def make_app(tmp_path: Path, **overrides: Any) -> AtlasApp:
    options: dict[str, Any] = {
        "app_name": f"atlas-unit-{uuid.uuid4().hex[:12]}",
        "table_store": "memory://",
        "topic_partitions": PARTITIONS,
        "data_dir": tmp_path,
        **overrides,
    }
    return create_app(Settings(_env_file=None, **options))


@pytest.fixture
def recorder() -> Iterator[tuple[list[Sent], mock.AsyncMock]]:
    sent: list[Sent] = []
    send_soon = faust.Topic.send_soon

    def record(topic: Any, **kwargs: Any) -> Any:
        sent.append(
            Sent(
                topic.get_topic_name(),
                kwargs.get("key"),
                kwargs.get("value"),
                kwargs.get("partition"),
                kwargs.get("headers"),
            )
        )
        return send_soon(topic, **kwargs)

    async def record_many(
        producer: Any,
        topic: str,
        records: Any,
        partitions: int | None = None,
        *,
        partition: int | None = None,
        on_delivered: Any = None,
    ) -> None:
        for key, value, headers in records:
            where = partition_for(key, PARTITIONS) if partition is None else partition
            sent.append(Sent(topic, key, value, where, headers))

    with (
        mock.patch.object(faust.Topic, "maybe_declare", new_callable=mock.AsyncMock) as declare,
        mock.patch.object(faust.Topic, "send_soon", autospec=True, side_effect=record),
        mock.patch.object(SafeProducer, "send_many", autospec=True, side_effect=record_many),
    ):
        yield sent, declare


@asynccontextmanager
async def running(
    app: AtlasApp, name: str, recorder: tuple[list[Sent], mock.AsyncMock]
) -> AsyncIterator[Harness]:
    async with app.agents[name].test_context() as agent:
        yield Harness(app, agent, *recorder)


@pytest.fixture
async def ledger(
    tmp_path: Path, recorder: tuple[list[Sent], mock.AsyncMock]
) -> AsyncIterator[Harness]:
    async with running(make_app(tmp_path), "ledger", recorder) as harness:
        yield harness


@pytest.fixture
async def transfers(
    tmp_path: Path, recorder: tuple[list[Sent], mock.AsyncMock]
) -> AsyncIterator[Harness]:
    async with running(make_app(tmp_path), "transfers", recorder) as harness:
        yield harness


def payment(
    event_id: str, kind: str = "deposit", amount: Any = 100, account_id: str = "acc-1"
) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "type": kind,
            "account_id": account_id,
            "amount": amount,
            "currency": "EUR",
            "occurred_at": "2026-11-26T10:00:00Z",
        }
    )


def open_account(account_id: str = "acc-1", command_id: str | None = None) -> bytes:
    cmd = OpenAccount(command_id or f"open-{account_id}", account_id, "o@example.com", "EUR")
    return encode_command(cmd)


def wrong_partition(key: bytes) -> int:
    return (partition_for(key, PARTITIONS) + 1) % PARTITIONS


def test_the_app_has_both_agents(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    assert set(app.agents) == {"ledger", "transfers"}
    assert app.agents["ledger"].channel is app.topics_.account_inputs
    assert app.agents["transfers"].channel is app.topics_.transfer_events
    assert set(app.topics_.account_inputs.topics) == {
        "atlas.payments.v1",
        "atlas.ledger.commands.v1",
        "atlas.ledger.legs.v1",
    }


# ---- the ledger agent ------------------------------------------------------------------------


async def test_an_opened_account_gets_its_deposits(ledger: Harness) -> None:
    t = ledger.topics
    await ledger.run(
        (t.commands, b"acc-1", open_account()),
        (t.payments, b"acc-1", payment("e1", amount=250)),
        (t.payments, b"acc-1", payment("e2", amount=50)),
        (t.payments, b"acc-1", payment("e3", kind="withdrawal", amount=1000)),
    )
    account = ledger.account("acc-1")
    assert account is not None
    assert account.balance == 300
    assert [(o["event_id"], o["status"], o["reason"]) for o in ledger.outcomes()] == [
        ("e1", "applied", None),
        ("e2", "applied", None),
        ("e3", "rejected", "insufficient funds"),
    ]
    assert [s.key for s in ledger.to(t.outcomes)] == [b"e1", b"e2", b"e3"]
    assert ledger.to(t.dlq) == []
    # the marks remember where each message was read
    (mark,) = [m for m in account.marks if m.key == "e2"]
    assert (mark.position.topic, mark.position.partition, mark.position.offset) == (
        "atlas.payments.v1",
        partition_for(b"acc-1", PARTITIONS),
        1,
    )


async def test_the_account_record_is_written_on_the_key_partition_with_the_raw_key(
    ledger: Harness,
) -> None:
    """Table routing (`app.table_route`) finds state by the murmur2 partition of the key bytes."""
    t = ledger.topics
    await ledger.run((t.commands, b"acc-7", open_account("acc-7")))
    await ledger.run((t.payments, b"acc-7", payment("e1", account_id="acc-7")))
    records = ledger.changelog(ledger.app.ledger_tables.accounts)
    assert len(records) == 2  # one record per batch
    (created, deposited) = records
    assert created.partition == deposited.partition == partition_for(b"acc-7", PARTITIONS)
    assert deposited.value["balance"] == 100
    accounts = ledger.app.ledger_tables.accounts
    serialized_key, _ = accounts.changelog_topic.prepare_key(created.key, None)
    assert serialized_key == b"acc-7"


async def test_a_batch_writes_each_changed_account_once(ledger: Harness) -> None:
    t = ledger.topics
    await ledger.run((t.commands, b"acc-1", open_account()))
    batch = await ledger.deliver_batch(t.payments, [(b"acc-1", payment(f"e{i}")) for i in range(4)])
    await ledger.settle(batch)
    records = ledger.changelog(ledger.app.ledger_tables.accounts)
    assert len(records) == 2  # the opening's batch, then the four payments' batch
    assert records[1].value["balance"] == 400
    assert len(records[1].value["marks"]) == 5
    assert [o["event_id"] for o in ledger.outcomes()] == ["e0", "e1", "e2", "e3"]


async def test_a_duplicate_event_id_is_not_applied_twice(ledger: Harness) -> None:
    t = ledger.topics
    await ledger.run((t.commands, b"acc-1", open_account()))
    (first,) = await ledger.run((t.payments, b"acc-1", payment("e1", amount=70)))
    applied = ledger.account("acc-1")
    assert applied is not None and applied.balance == 70
    await ledger.run((t.payments, b"acc-1", payment("e1", amount=70)))  # a producer's resend
    assert ledger.account("acc-1") == applied
    # a replay of the first delivery (same partition and offset), as after a crash
    replay = await ledger.deliver(
        t.payments, b"acc-1", payment("e1", amount=70), offset=first.offset
    )
    await ledger.settle(replay)
    assert ledger.account("acc-1") == applied
    assert [o["status"] for o in ledger.outcomes()] == ["applied", "duplicate", "applied"]
    # open, deposit, then the same state again for the resend's and the replay's batches: a
    # replay rewrites the record, because after a crash the local store can be ahead of the
    # changelog, and only the changelog survives a move of the partition.
    records = ledger.changelog(ledger.app.ledger_tables.accounts)
    assert len(records) == 4
    assert records[1].value == records[2].value == records[3].value == applied.to_json()


DLQ_CASES = [
    pytest.param("payments", b"acc-1", b"\xff not json", "decode_error", id="undecodable"),
    pytest.param("payments", b"acc-1", payment("e1", amount=1.5), "schema_error", id="float"),
    pytest.param("payments", b"acc-1", payment("e1", amount=-1), "schema_error", id="negative"),
    pytest.param("payments", b"acc-2", payment("e1"), "key_mismatch", id="key-mismatch"),
    pytest.param("payments", None, payment("e1"), "key_missing", id="no-key"),
    pytest.param("commands", b"acc-1", b'{"kind": "nope"}', "schema_error", id="bad-command"),
    pytest.param("legs", b"acc-1", None, "decode_error", id="empty-leg"),
]


@pytest.mark.parametrize(("topic", "key", "value", "error_type"), DLQ_CASES)
async def test_invalid_input_is_dead_lettered_with_its_reason(
    ledger: Harness, topic: str, key: bytes | None, value: bytes, error_type: str
) -> None:
    t = ledger.topics
    await ledger.run((t.commands, b"acc-1", open_account()))
    source = getattr(t, topic)
    (message,) = await ledger.run((source, key, value))
    (dead,) = ledger.to(t.dlq)
    assert (dead.key, dead.value) == (key, value)
    headers = dict(dead.headers)
    assert headers["error.type"] == error_type.encode()
    assert headers["error.message"]
    assert headers["source.topic"] == source.get_topic_name().encode()
    assert headers["source.partition"] == str(message.partition).encode()
    assert headers["source.offset"] == str(message.offset).encode()
    assert ledger.outcomes() == []
    account = ledger.account("acc-1")
    assert account is not None and account.balance == 0 and len(account.marks) == 1


async def test_bad_input_does_not_stop_the_agent(ledger: Harness) -> None:
    t = ledger.topics
    await ledger.run(
        (t.commands, b"acc-1", open_account()),
        (t.payments, b"acc-1", b"{"),
        (t.payments, b"acc-1", payment("e1")),
    )
    assert len(ledger.to(t.dlq)) == 1
    assert ledger.agent.crash_reason is None
    account = ledger.account("acc-1")
    assert account is not None and account.balance == 100


async def test_a_payment_on_the_wrong_partition_is_rerouted_not_applied(ledger: Harness) -> None:
    t = ledger.topics
    await ledger.run((t.commands, b"acc-1", open_account()))
    before = ledger.account("acc-1")
    right = partition_for(b"acc-1", PARTITIONS)
    wrong = wrong_partition(b"acc-1")
    trace = ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    value = payment("e1", amount=500)
    misplaced = await ledger.deliver(t.payments, b"acc-1", value, partition=wrong, headers=[trace])
    await ledger.settle(misplaced)

    assert ledger.account("acc-1") == before
    assert ledger.outcomes() == []
    assert ledger.to(t.dlq) == []
    (copy,) = ledger.to(t.payments)
    assert (copy.key, copy.value, copy.partition) == (b"acc-1", value, right)
    assert copy.headers == [trace, ("atlas.rerouted-from", str(wrong).encode())]

    # the copy, read where it belongs, is applied once
    await ledger.run((t.payments, copy.key, copy.value))
    account = ledger.account("acc-1")
    assert account is not None and account.balance == 500


async def test_an_internal_message_on_the_wrong_partition_is_dead_lettered(
    ledger: Harness,
) -> None:
    t = ledger.topics
    msg = await ledger.deliver(
        t.commands, b"acc-1", open_account(), partition=wrong_partition(b"acc-1")
    )
    await ledger.settle(msg)
    (dead,) = ledger.to(t.dlq)
    assert dict(dead.headers)["error.type"] == b"wrong_partition"
    assert ledger.to(t.commands) == []
    assert ledger.account("acc-1") is None


async def test_a_transfer_request_emits_a_credit_leg_and_a_debited_event(ledger: Harness) -> None:
    t = ledger.topics
    request = RequestTransfer("tr-1", "acc-1", "acc-2", 300, "EUR")
    await ledger.run(
        (t.commands, b"acc-1", open_account("acc-1")),
        (t.commands, b"acc-2", open_account("acc-2")),
        (t.payments, b"acc-1", payment("e1", amount=1000)),
        (t.commands, b"acc-1", encode_command(request)),
    )
    source = ledger.account("acc-1")
    assert source is not None and source.balance == 700

    (leg,) = ledger.to(t.legs)
    assert leg.key == b"acc-2"
    assert decode_command(leg.key, leg.value) == CreditLeg("tr-1", "acc-1", "acc-2", 300, "EUR")
    (event,) = ledger.to(t.transfer_events)
    assert event.key == b"tr-1"
    assert decode_transfer_event(event.value) == TransferEvent(
        "tr-1", TransferStatus.DEBITED, "acc-1", "acc-2", 300, "EUR"
    )

    # leg 2, delivered on the destination's partition: credited, transfer completed
    await ledger.run((t.legs, leg.key, leg.value))
    destination = ledger.account("acc-2")
    assert destination is not None and destination.balance == 300
    statuses = [decode_transfer_event(s.value).status for s in ledger.to(t.transfer_events)]
    assert statuses == [TransferStatus.DEBITED, TransferStatus.COMPLETED]


async def test_a_credit_leg_that_bounces_is_refunded_to_the_source(ledger: Harness) -> None:
    t = ledger.topics
    await ledger.run(
        (t.commands, b"acc-1", open_account("acc-1")),
        (t.payments, b"acc-1", payment("e1", amount=1000)),
        (
            t.commands,
            b"acc-1",
            encode_command(RequestTransfer("tr-1", "acc-1", "nobody", 300, "EUR")),
        ),
    )
    (credit,) = ledger.to(t.legs)
    await ledger.run((t.legs, credit.key, credit.value))
    refund = ledger.to(t.legs)[-1]
    assert refund.key == b"acc-1"
    assert decode_command(refund.key, refund.value) == RefundLeg(
        "tr-1", "acc-1", "nobody", 300, "EUR", "unknown account"
    )
    await ledger.run((t.legs, refund.key, refund.value))
    source = ledger.account("acc-1")
    assert source is not None and source.balance == 1000
    final = decode_transfer_event(ledger.to(t.transfer_events)[-1].value)
    assert (final.status, final.reason) == (TransferStatus.REVERSED, "unknown account")


async def test_applied_payments_are_counted_in_the_account_record(ledger: Harness) -> None:
    t = ledger.topics
    values = [
        payment("e1", amount=250),
        payment("e2", amount=50),
        payment("e2", amount=50),  # duplicate: not counted
        payment("e3", kind="withdrawal", amount=10**6),  # rejected: not counted
    ]
    await ledger.run((t.commands, b"acc-1", open_account()))
    messages = [await ledger.deliver(t.payments, b"acc-1", v) for v in values]
    await ledger.settle(*messages)
    account = ledger.account("acc-1")
    assert account is not None
    assert account.activity_at(time.time()) == {"count": 2, "volume": 300}
    assert account.activity_at(time.time() + 3600) == {"count": 0, "volume": 0}  # next hour


async def test_the_worker_declares_every_topic_when_it_starts(ledger: Harness) -> None:
    declarers = [s for s in ledger.app.on_init_dependencies() if isinstance(s, TopicDeclarer)]
    assert len(declarers) == 1
    ledger.declare.reset_mock()
    await declarers[0].start()
    await declarers[0].stop()
    assert ledger.declare.await_count == len(ledger.topics.all())
    names = {t.get_topic_name() for t in ledger.topics.all()}
    assert {"atlas.payments.v1", "atlas.outcomes.v1", "atlas.dlq.v1"} <= names


def test_topics_are_declared_after_the_producer_starts_and_before_the_consumer(
    ledger: Harness,
) -> None:
    app = ledger.app
    services = list(app.on_init_dependencies())
    declarer = next(i for i, s in enumerate(services) if isinstance(s, TopicDeclarer))
    assert services.index(app.producer) < declarer < services.index(app.consumer)


async def test_a_failed_batch_is_never_committed(
    tmp_path: Path, recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """streams/agents.py: a batch that fails half-way must be read again after restart.

    The batch is not acked, and the producer refuses every later commit too (the consumer
    awaits `producer.flush()` before it commits, and it raises): what the batch wrote before
    it failed must never be committed past. Then the worker crashes.
    """
    app = make_app(tmp_path)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug half-way through a batch")

    monkeypatch.setattr(app.ledger, "_apply", broken)
    async with running(app, "ledger", recorder) as h:
        await h.deliver(h.topics.payments, b"acc-3", payment("e1", account_id="acc-3"))
        await eventually(lambda: h.agent.crash_reason is not None, "the agent to crash")
        crash = h.agent.crash_reason
    assert isinstance(crash, RuntimeError)
    assert h.outcomes() == []
    with pytest.raises(ProducerSendError):
        await app.producer.flush()


async def test_a_batch_run_again_after_a_leader_election_applies_once(ledger: Harness) -> None:
    """streams/agents.py: the effects' send meets NotLeaderForPartition once, after the state
    write; the batch runs again, and its deposit is applied once, its outcome sent once."""
    t = ledger.topics
    await ledger.run((t.commands, b"acc-1", open_account()))
    send_many = SafeProducer.send_many
    recorded = send_many.side_effect  # type: ignore[attr-defined]
    failures = [NotLeaderForPartitionError()]

    async def flaky(*args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        await recorded(*args, **kwargs)

    send_many.side_effect = flaky  # type: ignore[attr-defined]
    await ledger.run((t.payments, b"acc-1", payment("e1", amount=100)))
    account = ledger.account("acc-1")
    assert account is not None and account.balance == 100
    assert [(o["event_id"], o["status"]) for o in ledger.outcomes()] == [("e1", "applied")]
    assert not failures and ledger.agent.crash_reason is None


# ---- the transfers agent ---------------------------------------------------------------------


def transfer_event(status: TransferStatus, reason: str | None = None) -> bytes:
    return encode_event(TransferEvent("tr-1", status, "acc-1", "acc-2", 300, "EUR", reason))


async def test_the_transfers_agent_writes_the_transfers_table(transfers: Harness) -> None:
    t = transfers.topics
    await transfers.run((t.transfer_events, b"tr-1", transfer_event(TransferStatus.DEBITED)))
    table = transfers.app.ledger_tables.transfers
    assert table.get(b"tr-1") == {
        "transfer_id": "tr-1",
        "status": "debited",
        "reason": None,
        "from_account": "acc-1",
        "to_account": "acc-2",
        "amount": 300,
        "currency": "EUR",
    }
    await transfers.run((t.transfer_events, b"tr-1", transfer_event(TransferStatus.COMPLETED)))
    assert table.get(b"tr-1")["status"] == "completed"
    records = transfers.changelog(table)
    assert [r.value["status"] for r in records] == ["debited", "completed"]
    assert {r.partition for r in records} == {partition_for(b"tr-1", PARTITIONS)}


async def test_the_transfers_agent_ignores_stale_and_replayed_events(transfers: Harness) -> None:
    t = transfers.topics
    await transfers.run(
        (t.transfer_events, b"tr-1", transfer_event(TransferStatus.REVERSED, "account is closed"))
    )
    batch = await transfers.deliver_batch(
        t.transfer_events,
        [
            (b"tr-1", transfer_event(TransferStatus.DEBITED)),  # late
            (b"tr-1", transfer_event(TransferStatus.COMPLETED)),  # other final
            (b"tr-1", transfer_event(TransferStatus.REVERSED, "x")),  # replay
        ],
    )
    await transfers.settle(batch)
    table = transfers.app.ledger_tables.transfers
    record = table.get(b"tr-1")
    assert (record["status"], record["reason"]) == ("reversed", "account is closed")
    # The second batch changes nothing and writes the same state again (see the ledger test).
    records = transfers.changelog(table)
    assert [r.value for r in records] == [record, record]


async def test_the_transfers_agent_skips_an_undecodable_event(transfers: Harness) -> None:
    t = transfers.topics
    await transfers.run(
        (t.transfer_events, b"tr-1", b"garbage"),
        (t.transfer_events, b"tr-1", transfer_event(TransferStatus.DEBITED)),
    )
    assert transfers.agent.crash_reason is None
    assert transfers.app.ledger_tables.transfers.get(b"tr-1")["status"] == "debited"


async def test_decoded_records_are_cached_until_a_rebalance_starts(ledger: Harness) -> None:
    t = ledger.topics
    await ledger.run((t.commands, b"acc-1", open_account()), (t.payments, b"acc-1", payment("e1")))
    account = ledger.account("acc-1")
    assert account is not None and account.balance == 100
    # What changelog recovery does in a rebalance: the store changes under the agent.
    recovered = replace(account, balance=5000, version=account.version + 1)
    ledger.app.ledger_tables.accounts.data[b"acc-1"] = recovered.to_json()
    with mock.patch.object(faust.App, "on_rebalance_start"):
        ledger.app.on_rebalance_start()  # the worker's override: the cache is dropped
    await ledger.run((t.payments, b"acc-1", payment("e2")))
    after = ledger.account("acc-1")
    assert after is not None and after.balance == 5100  # read from the store, not the cache
