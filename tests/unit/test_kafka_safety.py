"""The commit-safe transport (streams/kafka.py), against fakes of what lies under it.

The SIGKILL tests of the integration tier pass with Faust's own transport too (two runs): the
window in which Faust commits past an undelivered record is narrow. These tests pin the
mechanism itself: the flush before every commit waits for every record handed over, and
refuses (raises) when one failed or a batch failed, and the commit never passes a message of
this generation that is still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from faust.exceptions import ProducerSendError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.app import AtlasApp
from streams.kafka import SafeConsumer, SafeProducer, retriable

TOPIC_PARTITION = TP("atlas.payments.v1", 0)


class Broker:
    """Stands in for aiokafka under Faust's producer: each send acks (or fails) later."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[Any]] = []

    async def send(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        await asyncio.sleep(0)  # appending to the accumulator
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        return fut


@pytest.fixture
def broker() -> Iterator[Broker]:
    b = Broker()
    with mock.patch.object(faust_aiokafka.Producer, "send", b.send):
        yield b


async def send(producer: SafeProducer) -> Any:
    return await producer.send("t", b"k", b"v", None, None, None)


async def test_the_transport_is_the_safe_one(app: AtlasApp) -> None:
    assert isinstance(app.producer, SafeProducer)
    assert isinstance(app.consumer, SafeConsumer)


async def test_flush_waits_for_every_record_handed_over(app: AtlasApp, broker: Broker) -> None:
    producer = app.producer
    await send(producer)
    await send(producer)
    flush = asyncio.create_task(producer.flush())
    await asyncio.sleep(0.05)
    assert not flush.done(), "flush returned while records were unacknowledged"
    broker.pending[0].set_result("ok")
    await asyncio.sleep(0.01)
    assert not flush.done()
    broker.pending[1].set_result("ok")
    await asyncio.wait_for(flush, 1)
    assert producer.outstanding == 0


async def test_a_failed_delivery_refuses_this_and_every_later_commit(
    app: AtlasApp, broker: Broker
) -> None:
    producer = app.producer
    await send(producer)
    broker.pending[0].set_exception(RuntimeError("broker said no"))
    with pytest.raises(ProducerSendError):
        await producer.flush()
    with pytest.raises(ProducerSendError):  # sticky: nothing is committed after a loss
        await producer.flush()


async def test_a_record_not_acknowledged_in_time_refuses_the_commit(
    app: AtlasApp, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.producer, "flush_timeout_s", 0.05)
    await send(app.producer)
    with pytest.raises(ProducerSendError, match="not acknowledged"):
        await app.producer.flush()


async def test_records_handed_over_after_the_flush_started_do_not_hold_it(
    app: AtlasApp, broker: Broker
) -> None:
    producer = app.producer
    await send(producer)
    flush = asyncio.create_task(producer.flush())
    await asyncio.sleep(0.01)
    await send(producer)  # a later batch's record: the next commit's business
    broker.pending[0].set_result("ok")
    await asyncio.wait_for(flush, 1)
    assert producer.outstanding == 1


async def test_fail_refuses_later_commits(app: AtlasApp) -> None:
    app.producer.fail(RuntimeError("a batch failed half-way"))
    with pytest.raises(ProducerSendError):
        await app.producer.flush()


def in_flight(
    consumer: SafeConsumer, committed: int, acked: list[int], *flying: tuple[int, int]
) -> None:
    consumer._committed_offset[TOPIC_PARTITION] = committed
    consumer._acked[TOPIC_PARTITION] = list(acked)
    consumer._acked_index[TOPIC_PARTITION] = set(acked)
    consumer._unacked_messages = [  # type: ignore[assignment]
        SimpleNamespace(tp=TOPIC_PARTITION, offset=o, acked=False, generation_id=g)
        for o, g in flying
    ]


def test_the_commit_never_passes_a_message_in_flight(app: AtlasApp) -> None:
    consumer = app.consumer
    generation = app.consumer_generation_id
    # Faust issue #606: with 31 in flight and 32, 33 acked, Faust alone commits 34...
    in_flight(consumer, 31, [32, 33], (31, generation))
    assert faust_aiokafka.Consumer._new_offset(consumer, TOPIC_PARTITION) == 34
    # ...and the safe consumer holds the commit at 31.
    in_flight(consumer, 31, [32, 33], (31, generation))
    assert consumer._new_offset(TOPIC_PARTITION) is None
    assert consumer._acked[TOPIC_PARTITION] == [32, 33]  # kept for when 31 is acked
    in_flight(consumer, 31, [31, 32, 34, 35], (33, generation))
    assert consumer._new_offset(TOPIC_PARTITION) == 33


def test_messages_of_an_older_generation_do_not_hold_the_commit(app: AtlasApp) -> None:
    consumer = app.consumer
    # After a rebalance the stream drops the old generation's messages without acking them.
    in_flight(consumer, 31, [31, 32, 33], (31, app.consumer_generation_id - 1))
    assert consumer._new_offset(TOPIC_PARTITION) == 34


@pytest.fixture
def seeks(app: AtlasApp, monkeypatch: pytest.MonkeyPatch) -> list[tuple[TP, int]]:
    """Where the consumer asked to read again from (instead of seeking a real consumer)."""
    asked: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        asked.append((tp, offset))

    monkeypatch.setattr(app.consumer, "seek", seek)
    monkeypatch.setattr(app.consumer, "add_future", asyncio.ensure_future)
    return asked


def test_a_hole_at_the_head_holds_the_commit(
    app: AtlasApp, monkeypatch: pytest.MonkeyPatch, seeks: list[tuple[TP, int]]
) -> None:
    consumer = app.consumer
    # 31 was delivered but never acked, and nothing is in flight (dropped in a rebalance).
    in_flight(consumer, 31, [32, 33])
    assert faust_aiokafka.Consumer._new_offset(consumer, TOPIC_PARTITION) == 34  # Faust: skip
    in_flight(consumer, 31, [32, 33])
    monkeypatch.setattr(consumer, "stall_s", 3600.0)
    assert consumer._new_offset(TOPIC_PARTITION) is None  # held, not skipped
    assert seeks == []  # not yet stalled for long


async def test_a_stalled_head_is_read_again_from_the_committed_offset(
    app: AtlasApp, monkeypatch: pytest.MonkeyPatch, seeks: list[tuple[TP, int]]
) -> None:
    consumer = app.consumer
    monkeypatch.setattr(consumer, "stall_s", 0.0)
    in_flight(consumer, 31, [32, 33])
    assert consumer._new_offset(TOPIC_PARTITION) is None
    await asyncio.sleep(0)
    assert seeks == [(TOPIC_PARTITION, 31)]  # ...and read again, which dedup makes safe


class BatchingKafka:
    """Stands in for the aiokafka producer under `send_many`: real batch builders, late acks."""

    def __init__(self, max_batch_size: int = 16384) -> None:
        from aiokafka.producer.message_accumulator import BatchBuilder

        self.builder = lambda: BatchBuilder(max_batch_size, 0, is_transactional=False)
        self.sent: list[tuple[str, int, Any]] = []
        self.pending: list[asyncio.Future[Any]] = []
        self.refusals: list[BaseException] = []  # raised by the next send_batch calls
        self.room = asyncio.Event()  # cleared: send_batch waits (the partition's last batch
        self.room.set()  # has not left yet)

    def create_batch(self) -> Any:
        return self.builder()

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[Any]:
        await self.room.wait()
        if self.refusals:
            raise self.refusals.pop(0)
        self.sent.append((topic, partition, batch))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        return fut


@contextlib.contextmanager
def over(kafka: BatchingKafka, producer: Any) -> Iterator[None]:
    """`producer` on top of the fake aiokafka producer (Faust's own flush left out)."""
    with (
        mock.patch.object(producer, "_ensure_producer", return_value=kafka),
        mock.patch.object(faust_aiokafka.Producer, "flush", mock.AsyncMock()),
    ):
        yield


def records(n: int, size: int = 10) -> list[tuple[bytes, bytes, None]]:
    return [(f"key-{i}".encode(), b"v" * size, None) for i in range(n)]


async def test_send_many_batches_by_partition_and_flush_waits_for_every_batch(
    app: AtlasApp,
) -> None:
    from streams.kafka import partition_for

    kafka = BatchingKafka()
    producer = app.producer
    with over(kafka, producer):
        await producer.send_many("outcomes", records(40))
        await producer.appended()
        expected = {partition_for(k, 4) for k, _, _ in records(40)}
        assert {p for _, p, _ in kafka.sent} == expected  # one batch per partition
        assert len(kafka.sent) == len(expected)
        flush = asyncio.create_task(producer.flush())
        await asyncio.sleep(0.05)
        assert not flush.done(), "flush returned while a batch was unacknowledged"
        for fut in kafka.pending:
            fut.set_result(None)
        await asyncio.wait_for(flush, 1)


async def test_a_failed_batch_refuses_this_and_every_later_commit(app: AtlasApp) -> None:
    kafka = BatchingKafka(max_batch_size=200)  # a few records per batch: several batches
    producer = app.producer
    with over(kafka, producer):
        await producer.send_many("outcomes", records(30, size=40), partitions=1)
        await producer.appended()
        assert len(kafka.sent) > 1  # a full batch went out and a new one was started
        kafka.pending[0].set_exception(RuntimeError("NotLeaderForPartition"))
        for fut in kafka.pending[1:]:
            fut.set_result(None)
        with pytest.raises(ProducerSendError):
            await producer.flush()
        with pytest.raises(ProducerSendError):  # sticky
            await producer.flush()


async def test_send_many_returns_before_aiokafka_takes_the_batches_and_keeps_their_order(
    app: AtlasApp,
) -> None:
    """An agent does not wait a broker round trip per batch; a partition's order stays."""
    kafka = BatchingKafka(max_batch_size=200)
    kafka.room.clear()  # aiokafka still holds the partition's previous batch
    producer = app.producer
    with over(kafka, producer):
        await asyncio.wait_for(producer.send_many("log", records(10, size=40), partitions=1), 1)
        await asyncio.wait_for(producer.send_many("log", records(3, size=41), partitions=1), 1)
        assert kafka.sent == [] and producer.outstanding > 2
        flush = asyncio.create_task(producer.flush())
        await asyncio.sleep(0.02)
        assert not flush.done(), "flush returned with batches not yet handed to aiokafka"
        kafka.room.set()
        await producer.appended()
        values = [r.value for _, _, b in kafka.sent for r in _records_of(b)]
        assert values == [b"v" * 40] * 10 + [b"v" * 41] * 3
        for fut in kafka.pending:
            fut.set_result(None)
        await asyncio.wait_for(flush, 1)


async def test_a_full_send_queue_makes_the_sender_wait(
    app: AtlasApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    kafka = BatchingKafka(max_batch_size=200)  # two or three records a batch
    kafka.room.clear()
    producer = app.producer
    monkeypatch.setattr(producer, "_appends", asyncio.Queue(maxsize=2))
    with mock.patch.object(producer, "_ensure_producer", return_value=kafka):
        send = asyncio.create_task(producer.send_many("log", records(30, size=40), partitions=1))
        await asyncio.sleep(0.02)
        assert not send.done(), "the queue took more batches than it has room for"
        kafka.room.set()
        await asyncio.wait_for(send, 1)
        await producer.appended()
        assert sum(b.record_count() for _, _, b in kafka.sent) == 30


async def test_a_retriable_refusal_hands_the_same_batch_over_again(app: AtlasApp) -> None:
    from aiokafka.errors import KafkaTimeoutError

    kafka = BatchingKafka()
    kafka.refusals = [KafkaTimeoutError()]  # no room in aiokafka's buffer in time
    producer = app.producer
    with over(kafka, producer):
        await producer.send_many("log", records(5), partitions=1)
        await asyncio.wait_for(producer.appended(), 5)
        assert not kafka.refusals and len(kafka.sent) == 1
        assert kafka.sent[0][2].record_count() == 5
        kafka.pending[0].set_result(None)
        await asyncio.wait_for(producer.flush(), 1)


async def test_a_fatal_refusal_loses_the_batch_and_refuses_every_later_commit(
    app: AtlasApp,
) -> None:
    from aiokafka.errors import RecordTooLargeError

    kafka = BatchingKafka()
    kafka.refusals = [RecordTooLargeError()]
    producer = app.producer
    with over(kafka, producer):
        delivered: list[int] = []
        await producer.send_many("log", records(5), partitions=1)
        await producer.send_many("log", records(2), partitions=1, on_delivered=delivered.append)
        await asyncio.wait_for(producer.appended(), 1)
        # Nothing behind the lost batch goes out: no later ack may report the partition
        # persisted past it.
        assert kafka.sent == [] and delivered == []
        with pytest.raises(ProducerSendError):
            await producer.flush()
        with pytest.raises(ProducerSendError):  # sticky
            await producer.flush()
        with pytest.raises(ProducerSendError) as refused:  # and the sender learns it at once
            await producer.send_many("log", records(1), partitions=1)
        assert not retriable(refused.value)


def _records_of(batch: Any) -> list[Any]:
    """The records in an aiokafka batch builder, read back as the consumer would."""
    from aiokafka.record.default_records import DefaultRecordBatch

    return list(DefaultRecordBatch(bytes(batch._build())))


async def test_a_cancelled_wait_inside_aiokafka_does_not_stop_the_appender(app: AtlasApp) -> None:
    """Only the appender's own cancellation ends it; a batch whose append was cancelled is lost."""
    kafka = BatchingKafka()
    kafka.refusals = [asyncio.CancelledError()]  # e.g. a drain waiter cancelled as aiokafka closes
    producer = app.producer
    with over(kafka, producer):
        await producer.send_many("log", records(5), partitions=1)
        await asyncio.wait_for(producer.appended(), 1)
        assert producer._appender is not None and not producer._appender.done()
        with pytest.raises(ProducerSendError):
            await producer.flush()
