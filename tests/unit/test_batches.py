"""The batch runtime's pieces (`streams.batches`), without a broker.

- `BatchScheduler`: one batch per input partition per fetch, changelogs record by record, and
  the time order of co-partitioned inputs with its bounded wait for a lagging input;
- `SafeConsumer`'s batch acks: every offset of a batch, none of a stale generation;
- `tables.store.PartitionStore`: a partition's records in one RocksDB write, read back by
  Faust's own table API.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from streams.app import create_app
from streams.batches import BatchMessage, BatchScheduler, RecordBatch, records_of
from streams.kafka import SafeConsumer
from streams.settings import Settings
from tables.store import PartitionStore
from tests.unit.conftest import unit_app

COMMANDS, LEGS, PAYMENTS, CHANGELOG = "commands", "legs", "payments", "accounts-changelog"


def record(topic: str, offset: int, ts: int, partition: int = 0) -> Any:
    return ConsumerRecord(topic, partition, offset, ts, 0, b"k", b"v", None, 1, 1, ())


@dataclass
class Broker:
    """What the scheduler asks of the consumer: lag per partition, the assignment, a clock."""

    lag: dict[TP, int | None] = field(default_factory=dict)
    assigned: set[TP] = field(default_factory=set)
    generation: int = 1
    now: float = 100.0
    rebalancing: bool = False

    def scheduler(self, idle_s: float = 0.5, max_records: int = 1000) -> BatchScheduler:
        return BatchScheduler(
            [(COMMANDS, LEGS, PAYMENTS)],
            lag=lambda tp: self.lag.get(tp, 0),
            assigned=lambda: self.assigned,
            generation=lambda: self.generation,
            idle_s=idle_s,
            max_records=max_records,
            hold=lambda: self.rebalancing,
            clock=lambda: self.now,
        )


def task(partition: int = 0) -> set[TP]:
    return {TP(t, partition) for t in (COMMANDS, LEGS, PAYMENTS)}


def run(scheduler: BatchScheduler, fetched: dict[TP, list[Any]]) -> list[tuple[str, list[int]]]:
    """What one fetch releases: (topic, offsets) per yielded batch, or per passed record."""
    out = []
    for tp, item in scheduler.iterate(fetched):
        if isinstance(item, RecordBatch):
            out.append((tp.topic, [r.offset for r in item.records]))
        else:
            out.append((tp.topic, [item.offset]))
    return out


def test_a_fetch_of_one_partition_is_one_batch_and_changelogs_pass_record_by_record() -> None:
    broker = Broker(assigned=task() | {TP(CHANGELOG, 0)})
    s = broker.scheduler()
    released = run(
        s,
        {
            TP(PAYMENTS, 0): [record(PAYMENTS, o, 10 + o) for o in range(5)],
            TP(CHANGELOG, 0): [record(CHANGELOG, o, 1) for o in range(2)],
        },
    )
    assert released == [(CHANGELOG, [0]), (CHANGELOG, [1]), (PAYMENTS, [0, 1, 2, 3, 4])]


def test_co_partitioned_inputs_are_released_in_timestamp_order() -> None:
    """The catch-up case: commands older than payments go first, interleaved by timestamp."""
    broker = Broker(assigned=task())
    released = run(
        broker.scheduler(),
        {
            TP(PAYMENTS, 0): [record(PAYMENTS, o, ts) for o, ts in enumerate([5, 6, 20, 21])],
            TP(COMMANDS, 0): [record(COMMANDS, o, ts) for o, ts in enumerate([1, 2, 10])],
        },
    )
    assert released == [
        (COMMANDS, [0, 1]),  # ts 1, 2: before the payments' head (5)
        (PAYMENTS, [0, 1]),  # ts 5, 6: up to the commands' next head (10)
        (COMMANDS, [2]),
        (PAYMENTS, [2, 3]),
    ]


def test_a_tie_goes_to_the_command() -> None:
    broker = Broker(assigned=task())
    released = run(
        broker.scheduler(),
        {
            TP(PAYMENTS, 0): [record(PAYMENTS, 0, 7)],
            TP(COMMANDS, 0): [record(COMMANDS, 0, 7)],
        },
    )
    assert released == [(COMMANDS, [0]), (PAYMENTS, [0])]


def test_a_lagging_input_with_nothing_fetched_is_waited_for_then_skipped() -> None:
    broker = Broker(assigned=task(), lag={TP(COMMANDS, 0): 3})
    s = broker.scheduler(idle_s=0.5)
    payments = [record(PAYMENTS, o, 50 + o) for o in range(3)]
    assert run(s, {TP(PAYMENTS, 0): payments}) == []  # held: commands have records to fetch
    assert s.wait_hint() == pytest.approx(0.5)
    broker.now += 0.2
    assert run(s, {}) == []
    assert s.wait_hint() == pytest.approx(0.3)
    broker.now += 0.31
    assert run(s, {}) == [(PAYMENTS, [0, 1, 2])]  # waited out: go ahead without it
    assert s.wait_hint() is None


def test_the_lagging_input_arriving_in_time_is_merged_in_order() -> None:
    broker = Broker(assigned=task(), lag={TP(COMMANDS, 0): 1})
    s = broker.scheduler()
    assert run(s, {TP(PAYMENTS, 0): [record(PAYMENTS, 0, 50)]}) == []
    broker.lag[TP(COMMANDS, 0)] = 0
    released = run(s, {TP(COMMANDS, 0): [record(COMMANDS, 0, 40)]})
    assert released == [(COMMANDS, [0]), (PAYMENTS, [0])]


def test_an_input_never_fetched_counts_as_lagging() -> None:
    broker = Broker(assigned=task(), lag={TP(COMMANDS, 0): None})
    assert run(broker.scheduler(), {TP(PAYMENTS, 0): [record(PAYMENTS, 0, 1)]}) == []


def test_caught_up_inputs_hold_nothing_back() -> None:
    broker = Broker(assigned=task())  # lag 0 everywhere
    assert run(broker.scheduler(), {TP(LEGS, 0): [record(LEGS, 0, 9)]}) == [(LEGS, [0])]


def test_tasks_are_independent_and_batches_are_bounded() -> None:
    broker = Broker(assigned=task(0) | task(1), lag={TP(COMMANDS, 1): 5})
    s = broker.scheduler(max_records=2)
    released = run(
        s,
        {
            TP(PAYMENTS, 0): [record(PAYMENTS, o, o) for o in range(5)],
            TP(PAYMENTS, 1): [record(PAYMENTS, 0, 0, partition=1)],
        },
    )
    # partition 1 waits for its commands; partition 0 goes, two records at a time
    assert released == [(PAYMENTS, [0, 1]), (PAYMENTS, [2, 3]), (PAYMENTS, [4])]


def test_a_new_generation_or_a_seek_drops_what_was_buffered() -> None:
    broker = Broker(assigned=task(), lag={TP(COMMANDS, 0): 1})
    s = broker.scheduler()
    assert run(s, {TP(PAYMENTS, 0): [record(PAYMENTS, 0, 5)]}) == []
    assert s.buffered == 1
    broker.generation += 1
    assert run(s, {}) == []
    assert s.buffered == 0  # fetched again from the committed offset after the rebalance
    assert run(s, {TP(PAYMENTS, 0): [record(PAYMENTS, 0, 5)]}) == []
    s.forget([TP(PAYMENTS, 0)])
    assert s.buffered == 0


def test_nothing_is_released_while_the_group_rebalances() -> None:
    """Faust clears the agents' queues after its seek: a batch handed over before is lost."""
    broker = Broker(assigned=task() | {TP(CHANGELOG, 0)}, rebalancing=True)
    s = broker.scheduler()
    fetched = {
        TP(PAYMENTS, 0): [record(PAYMENTS, 0, 5), record(PAYMENTS, 1, 6)],
        TP(CHANGELOG, 0): [record(CHANGELOG, 0, 1)],
    }
    assert run(s, fetched) == [(CHANGELOG, [0])]  # table recovery goes on
    assert s.buffered == 2
    assert s.wait_hint() == pytest.approx(0.05)  # the fetch looks again soon
    broker.rebalancing = False
    assert s.wait_hint() == 0.0  # at once: no fetch has to answer first
    assert run(s, {}) == [(PAYMENTS, [0, 1])]
    assert s.wait_hint() is None


def test_a_batch_message_stands_for_its_records() -> None:
    tp = TP(PAYMENTS, 3)
    records = [record(PAYMENTS, o, 1000 + o, partition=3) for o in (7, 8, 9)]
    message = BatchMessage(tp, RecordBatch(tp, records, generation_id=4))
    assert (message.offset, message.last_offset, message.generation_id) == (7, 9, 4)
    assert message.timestamp == 1.007  # its first record's, in seconds
    event = type("E", (), {"message": message})()
    assert list(records_of(event)) == records
    plain = type("E", (), {"message": records[0]})()
    assert list(records_of(plain)) == [records[0]]


# ---- SafeConsumer: acks of a batch ----------------------------------------------------------


def consumer(tmp_path: Path) -> tuple[Any, SafeConsumer]:
    app = unit_app(tmp_path)
    c = app.consumer
    assert isinstance(c, SafeConsumer)
    # What subscribing the ledger agent does: its input topics are acked.
    app.topics._acking_topics.add(app.topics_.payments.get_topic_name())
    return app, c


def batch(app: Any, offsets: Iterable[int], generation: int | None = None) -> BatchMessage:
    tp = TP(app.topics_.payments.get_topic_name(), 0)
    records = [record(tp.topic, o, o) for o in offsets]
    gen = app.consumer_generation_id if generation is None else generation
    return BatchMessage(tp, RecordBatch(tp, records, gen))


def test_a_batch_ack_records_every_offset_once(tmp_path: Path) -> None:
    app, c = consumer(tmp_path)
    message = batch(app, range(10, 15))
    c._unacked_messages.add(message)
    assert c.ack(message) is True
    assert c._acked[message.tp] == [10, 11, 12, 13, 14]
    assert c._n_acked == 1  # Faust's commit-every counts batches
    assert message not in c._unacked_messages
    assert c.ack(message) is False  # once
    assert c._n_acked == 1


def test_a_stale_generation_batch_is_released_never_recorded(tmp_path: Path) -> None:
    app, c = consumer(tmp_path)
    message = batch(app, range(3), generation=app.consumer_generation_id - 1)
    c._unacked_messages.add(message)
    assert c.ack(message) is False
    assert c._acked[message.tp] == []
    assert c._new_offset(message.tp) is None  # nothing to commit
    assert message.acked and message not in c._unacked_messages


def test_a_commit_stops_below_a_batch_still_in_flight(tmp_path: Path) -> None:
    app, c = consumer(tmp_path)
    done, in_flight = batch(app, range(0, 4)), batch(app, range(4, 8))
    for m in (done, in_flight):
        c._unacked_messages.add(m)
    c._committed_offset[done.tp] = 0
    c.ack(done)
    assert c._new_offset(done.tp) == 4  # the next offset to read: the in-flight batch's first
    c._committed_offset[done.tp] = 4  # as the commit does
    c.ack(in_flight)
    assert c._new_offset(done.tp) == 8


def test_the_read_offset_follows_a_batch_to_its_end(tmp_path: Path) -> None:
    """Faust's drain loop sets it to the delivered message's (first) offset."""
    app, c = consumer(tmp_path)
    message = batch(app, range(20, 25))

    async def faust_getmany(self: Any, _timeout: float) -> Any:
        yield message.tp, message

    import asyncio

    c._seeked_generation = app.consumer_generation_id  # the rebalance ended with its seek

    async def drain() -> None:
        from unittest import mock

        with mock.patch("faust.transport.consumer.Consumer.getmany", faust_getmany):
            async for tp, m in c.getmany(1.0):
                c._read_offset[tp] = m.offset  # as _drain_messages does

    asyncio.run(drain())
    assert c._read_offset[message.tp] == 24


class Committed:
    """Stands in for the aiokafka consumer in `perform_seek`: committed offsets and seeks."""

    def __init__(self, committed: dict[Any, int | None], beginning: dict[Any, int]) -> None:
        self._committed, self._beginning = committed, beginning
        self.seeks: dict[Any, int] = {}
        self._coordinator = self  # aiokafka asks its group coordinator

    def assignment(self) -> set[Any]:
        return set(self._committed)

    async def fetch_committed_offsets(self, tps: list[Any]) -> dict[Any, Any]:
        return {
            tp: SimpleNamespace(offset=-1 if self._committed[tp] is None else self._committed[tp])
            for tp in tps
        }

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self._beginning[tp] for tp in tps}

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks[tp] = offset


def test_the_closing_seek_moves_every_partition_and_drops_what_was_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka's seek_to_committed skips a partition committed at 0 or never committed."""
    app, c = consumer(tmp_path)
    topic = app.topics_.payments.get_topic_name()
    never, zero, seven = TP(topic, 0), TP(topic, 1), TP(topic, 2)
    changelog = TP(app.ledger_tables.accounts.changelog_topic.get_topic_name(), 0)
    broker = Committed({never: None, zero: 0, seven: 7, changelog: None}, beginning={never: 3})
    monkeypatch.setattr(c._thread, "_ensure_consumer", lambda: broker)

    async def on_the_consumer_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    monkeypatch.setattr(c._thread, "call_thread", on_the_consumer_thread)
    c.batches._pending[never] = deque([record(topic, 9, 9)])  # fetched before the seek
    c.seeked_to[never], c.delivered_to[never] = 4, 9
    c._seeked_generation = -1
    assert c._holding()

    import asyncio

    asyncio.run(c.perform_seek())
    assert broker.seeks == {never: 3, zero: 0, seven: 7}  # a changelog is recovery's to place
    assert c.batches.buffered == 0 and not c.delivered_to
    assert c.seeked_to == {never: 3, zero: 0, seven: 7}  # where each was read from
    assert c._read_offset[never] is None and c._read_offset[seven] == 7
    assert c._seeked_generation == app.consumer_generation_id
    assert not c._holding()
    app.rebalancing = True
    assert c._holding()


def test_without_a_committed_offset_the_head_is_where_the_partition_was_seeked_to(
    tmp_path: Path,
) -> None:
    """A dropped first batch holds the commit; Faust took the lowest acked offset as the head."""
    app, c = consumer(tmp_path)
    tp = TP(app.topics_.payments.get_topic_name(), 0)
    c._committed_offset[tp] = None
    c.seeked_to[tp], c.delivered_to[tp] = 0, 7
    later = batch(app, range(4, 8))
    c._unacked_messages.add(later)
    c.ack(later)
    assert c._new_offset(tp) is None  # 0..3 were handed over, never acked, not in flight
    c.seeked_to[tp] = 4
    assert c._new_offset(tp) == 8


# ---- PartitionStore: bulk state in RocksDB ----------------------------------------------------


def test_a_partitions_records_are_written_at_once_and_read_by_faust(tmp_path: Path) -> None:
    app = create_app(
        Settings(_env_file=None, app_name=f"atlas-unit-{uuid.uuid4().hex[:8]}", data_dir=tmp_path)
    )  # the default store: RocksDB
    table = app.ledger_tables.accounts
    store = PartitionStore(table)
    store.write(2, [(b"acc-1", orjson.dumps({"balance": 5})), (b"acc-2", orjson.dumps({"b": 1}))])
    assert store.get(2, b"acc-1") == {"balance": 5}
    assert table.get(b"acc-1") == {"balance": 5}  # Faust's own read, its JSON codec
    store.write(2, [(b"acc-2", None)])
    assert store.get(2, b"acc-2") is None
    store.persisted(2, 41)
    assert table.data.persisted_offset(TP(store.changelog, 2)) == 41


def test_the_memory_store_takes_the_same_writes(tmp_path: Path) -> None:
    app = unit_app(tmp_path)
    table = app.ledger_tables.accounts
    store = PartitionStore(table)
    store.write(1, [(b"acc-1", orjson.dumps({"balance": 5}))])
    assert table.get(b"acc-1") == {"balance": 5}
    assert store.get(1, b"acc-1") == {"balance": 5}


async def test_a_rebalance_during_the_closing_seek_starts_faust_s_recovery_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Returning would let Faust end the rebalance (and lift the hold) for a newer generation."""
    from faust.tables.recovery import RebalanceAgain

    app, c = consumer(tmp_path)
    tp = TP(app.topics_.payments.get_topic_name(), 0)
    broker = Committed({tp: 5}, beginning={})
    monkeypatch.setattr(c._thread, "_ensure_consumer", lambda: broker)

    async def lookup_meets_a_rebalance(fun: Any, *args: Any) -> Any:
        result = await fun(*args)
        app.consumer_generation_id += 1  # a new generation while the lookup was out
        return result

    monkeypatch.setattr(c._thread, "call_thread", lookup_meets_a_rebalance)
    c.batches._pending[tp] = deque([record(tp.topic, 9, 9)])
    with pytest.raises(RebalanceAgain):
        await c.perform_seek()
    assert broker.seeks == {} and c.batches.buffered == 1
    assert c._holding()
