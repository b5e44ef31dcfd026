"""The batch runtime: one Faust event per partition per fetch, in time order across inputs.

Faust delivers one event per record: a callback, a decode, an `Event`, a queue put, a stream
step and an ack each, which cost more than the ledger's own work. Here Faust still fetches,
assigns, pauses, recovers and commits, but an agent's input arrives as **record batches**:

1. `BatchScheduler` (Faust's `ConsumerScheduler` hook, installed by `SafeConsumer`) takes what
   one fetch returned and yields, per input partition, one `RecordBatch` of consecutive records
   in place of the records. Changelog and other topics pass through record by record, so table
   recovery is Faust's own.
2. `SafeConsumer._to_message` makes it a `BatchMessage`: a Faust message at the batch's first
   offset that carries the records. `BatchTopic` decodes it into one event without touching
   the payloads, which the agent decodes itself.
3. The agent processes the batch and acks it once; `SafeConsumer.ack` records every offset of
   the batch (a batch of an older generation records none). The in-flight check that holds a
   commit uses the batch's first offset, and the commit waits for every record the batch
   produced (`SafeProducer.flush`).

**Time-ordered co-partitioned inputs.** The ledger reads payments, commands and legs, all keyed
(and partitioned) by account: partition p of each is one *task*, as in Kafka Streams. Within a
task, records are released in timestamp order across its input partitions (ties: the order the
group lists its topics, commands first), so an `OpenAccount` written before a payment is applied
before it, even by a worker catching up on all three. A task whose input partition has nothing
buffered while the broker still has records for it (its highwater is past its fetch position,
or no fetch has answered yet: KIP-695's rule) waits up to `ATLAS_INPUT_IDLE_MS` for that
partition, then goes ahead without it (counted in `atlas_input_idle_expired_total`). An input
partition that is caught up holds nothing back. Buffered records belong to the generation that
fetched them: a rebalance or a seek drops them, and they are fetched again from the committed
offset.

**Nothing is handed over while the group rebalances.** Faust resumes the input partitions and
seeks them before it clears the agents' queues for the new assignment: a batch handed over in
between was dropped unseen, with its offsets read past. So while `hold()` (the app is
rebalancing, or the seek that ends it has yet to run) input records stay buffered here, and that
seek drops them in the same step as it moves every position (`SafeConsumer.perform_seek`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.metrics import INPUT_IDLE_EXPIRED

# A fetch's records of one topic partition: aiokafka's ConsumerRecords.
Records = Sequence[Any]


class RecordBatch:
    """Consecutive records of one topic partition, yielded by the scheduler as one record."""

    __slots__ = ("generation_id", "partition", "records", "topic")

    def __init__(self, tp: TP, records: list[Any], generation_id: int) -> None:
        self.topic, self.partition = tp
        self.records = records
        self.generation_id = generation_id


class BatchMessage(ConsumerMessage):
    """A Faust message standing for a batch: offset and timestamp are its first record's."""

    __slots__ = ("last_offset", "records")

    def __init__(self, tp: TP, batch: RecordBatch) -> None:
        records = batch.records
        first = records[0]
        super().__init__(
            tp.topic,
            tp.partition,
            first.offset,
            first.timestamp / 1000.0,
            first.timestamp_type,
            None,
            None,
            None,
            None,
            0,
            0,
            tp,
            generation_id=batch.generation_id,
        )
        self.records: list[Any] = records
        self.last_offset: int = records[-1].offset


def records_of(event: Any) -> Sequence[Any]:
    """The records an agent's event stands for: a batch's, or the event's own message.

    Records and Faust messages both have topic, partition, offset, timestamp, key, value and
    headers, which is all the processors read.
    """
    message = event.message
    if isinstance(message, BatchMessage):
        return message.records
    return (message,)


class BatchTopic(faust.Topic):
    """A topic whose batch messages decode into one event; any other message as Faust does."""

    def _compile_decode(self) -> None:
        super()._compile_decode()
        decode_one = self.decode
        create_event = self.app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            if isinstance(message, BatchMessage):
                return create_event(None, None, None, message)
            return await decode_one(message, propagate=propagate)

        self.decode = decode  # type: ignore[method-assign]


Lag = Callable[[TP], int | None]

# How often a fetch returns to look whether a hold on buffered records has ended.
HOLD_POLL_S = 0.05


class BatchScheduler:
    """Yields one `RecordBatch` per input partition per fetch, time-ordered within a task.

    `groups` lists the co-partitioned input topics read as one (tasks are their partitions);
    records of any other topic pass through one by one. `lag(tp)` is how many records the
    broker has for `tp` past what was fetched (None: not known yet); `assigned()` the
    consumer's partitions; `generation()` the group generation; while `hold()`, input records
    are buffered and none is released.
    """

    def __init__(
        self,
        groups: Iterable[Sequence[str]],
        *,
        lag: Lag,
        assigned: Callable[[], Iterable[TP]],
        generation: Callable[[], int],
        idle_s: float,
        max_records: int,
        hold: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rank: dict[str, tuple[int, int]] = {}  # topic -> (group, place in the group)
        for g, topics in enumerate(groups):
            for place, topic in enumerate(topics):
                self._rank[topic] = (g, place)
        self._lag, self._assigned, self._generation, self._hold = lag, assigned, generation, hold
        self.idle_s, self.max_records, self._clock = idle_s, max_records, clock
        self._pending: dict[TP, deque[Any]] = {}
        self._pending_generation = -1
        self._held = False
        self._blocked: dict[tuple[int, int], float] = {}  # task -> since when it has waited
        self._enforced: set[tuple[int, int]] = set()  # tasks that waited out idle_s

    # ---- Faust's ConsumerScheduler interface ---------------------------------------------------

    def iterate(self, records: Mapping[TP, Records]) -> Iterator[tuple[TP, Any]]:
        generation = self._generation()
        if generation != self._pending_generation:
            self.forget()
            self._pending_generation = generation
        rank = self._rank
        tasks: set[tuple[int, int]] = set()
        for tp, items in records.items():
            where = rank.get(tp.topic)
            if where is None:
                for record in items:  # changelogs: Faust's recovery, record by record
                    yield tp, record
                continue
            if items:
                self._pending.setdefault(tp, deque()).extend(items)
        self._held = self._hold()
        if self._held:
            return
        for tp, queue in self._pending.items():
            if queue:
                tasks.add((rank[tp.topic][0], tp.partition))
        if not tasks:
            return
        members = self._members()
        now = self._clock()
        for task in sorted(tasks):
            yield from self._release(task, members.get(task, ()), generation, now)

    # ---- the rest ------------------------------------------------------------------------------

    def forget(self, tps: Iterable[TP] | None = None) -> None:
        """Drop buffered records (all of them, or those of `tps`): they will be read again."""
        if tps is None:
            self._pending.clear()
            self._blocked.clear()
            self._enforced.clear()
            return
        for tp in tps:
            self._pending.pop(tp, None)

    def wait_hint(self) -> float | None:
        """Seconds until the soonest waiting task may go ahead, if one is waiting."""
        if self._held and any(self._pending.values()):
            # Look again soon while held, and at once when the hold is over: it ends without
            # a fetch answering.
            return HOLD_POLL_S if self._hold() else 0.0
        waiting = [since for task, since in self._blocked.items() if task not in self._enforced]
        if not waiting:
            return None
        soonest = min(waiting) + self.idle_s
        return max(0.0, soonest - self._clock())

    @property
    def buffered(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def _members(self) -> dict[tuple[int, int], list[TP]]:
        """The assigned input partitions of each task, in their group's order."""
        members: dict[tuple[int, int], list[TP]] = {}
        rank = self._rank
        for tp in self._assigned():
            where = rank.get(tp.topic)
            if where is not None:
                members.setdefault((where[0], tp.partition), []).append(tp)
        for tps in members.values():
            tps.sort(key=lambda tp: rank[tp.topic][1])
        return members

    def _release(
        self, task: tuple[int, int], members: Sequence[TP], generation: int, now: float
    ) -> Iterator[tuple[TP, RecordBatch]]:
        pending, rank = self._pending, self._rank
        queues = [(tp, pending[tp]) for tp in members if tp in pending]
        # A partition assigned but never fetched in this generation has no queue yet.
        unfetched = [tp for tp in members if tp not in pending]
        while True:
            filled = [(tp, q) for tp, q in queues if q]
            if not filled:
                return
            empty = [tp for tp, q in queues if not q] + unfetched
            if any(self._behind(tp) for tp in empty):
                since = self._blocked.setdefault(task, now)
                if task not in self._enforced:
                    if now - since < self.idle_s:
                        return  # wait for the lagging input (at most idle_s)
                    self._enforced.add(task)  # go ahead without it while it stays empty
                    INPUT_IDLE_EXPIRED.inc()
            else:
                self._blocked.pop(task, None)
                self._enforced.discard(task)
            # The input whose head is oldest goes first, up to the next-oldest head.
            tp, queue = min(filled, key=lambda item: (item[1][0].timestamp, rank[item[0].topic]))
            place = rank[tp.topic][1]
            bound = min(
                ((q[0].timestamp, rank[other.topic][1]) for other, q in filled if other != tp),
                default=None,
            )
            taken: list[Any] = []
            limit = self.max_records
            while queue and len(taken) < limit:
                head = queue[0]
                if bound is not None and (head.timestamp, place) > bound:
                    break
                taken.append(queue.popleft())
            yield tp, RecordBatch(tp, taken, generation)

    def _behind(self, tp: TP) -> bool:
        lag = self._lag(tp)
        return lag is None or lag > 0
