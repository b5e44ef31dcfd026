"""Faust's Kafka transport, made safe for "state change, then sends, then offset commit".

Read from faust-streaming 0.15.3: before committing, the consumer awaits `producer.flush()`, but
that flush can return with records still queued or in flight, never raises when a delivery
failed, and a failed changelog send is only logged. A committed offset can therefore run ahead
of a table write or an output that never reached Kafka, and a SIGKILL then loses it.

`SafeProducer` tracks every record from the moment it is handed over (table changelog writes go
through `send_soon`, a batch's effects through `send_many`) until Kafka acknowledges it. Its
`flush`, the last step before every commit, waits for all records handed over so far and raises
if any failed, now or earlier: the commit is abandoned and the worker stops, so the uncommitted
input is read again by whoever owns the partition next.

`SafeConsumer` caps a commit at the lowest offset still in flight on its partition (Faust issue
#606 can commit past an in-flight message when later ones are acked), and remembers the offsets
that were really committed, for the dedup marks' archiving (`tables.ledger`).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from faust.exceptions import ProducerSendError
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.metrics import MESSAGES_PRODUCED

SCHEME = "atlas-kafka"

Record = tuple[bytes, bytes, list[tuple[str, bytes]] | None]  # key, value, headers


class SafeProducer(faust_aiokafka.Producer):
    flush_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._unresolved: set[asyncio.Future[Any]] = set()
        self._failure: BaseException | None = None
        self._partition_counts: dict[str, int] = {}

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._unresolved.add(fut)
        fut.add_done_callback(self._settled)

    def _settled(self, fut: asyncio.Future[Any]) -> None:
        self._unresolved.discard(fut)
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is not None and self._failure is None:
            self._failure = exc

    def send_soon(self, fut: Any) -> None:
        self._track(fut)
        super().send_soon(fut)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        MESSAGES_PRODUCED.labels(topic).inc()
        # Counted before the await: a record still being appended is already outstanding.
        outstanding: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._track(outstanding)
        try:
            delivery = await super().send(
                topic, key, value, partition, timestamp, headers, transactional_id=transactional_id
            )
        except BaseException as exc:
            if not outstanding.done():
                outstanding.set_exception(exc)
            raise

        cast("asyncio.Future[Any]", delivery).add_done_callback(lambda f: _settle(outstanding, f))
        return delivery

    def fail(self, reason: BaseException) -> None:
        """Refuse every later commit of this process (a batch failed half-way)."""
        if self._failure is None:
            self._failure = reason

    @property
    def outstanding(self) -> int:
        return len(self._unresolved)

    async def send_many(
        self, topic: str, records: Sequence[Record], partitions: int | None = None
    ) -> None:
        """Hand records straight to aiokafka, one batch per partition (the key's murmur2).

        The bulk path for a batch's outputs: Faust's per-record send path (a buffer, a future
        and a callback chain per record) is most of the cost of an output record. Each batch
        is tracked like any other send, so `flush` (and with it the commit) waits for it.
        """
        if not records:
            return
        producer = self._ensure_producer()
        if partitions is None:
            partitions = self._partition_counts.get(topic)
            if partitions is None:
                partitions = self._partition_counts[topic] = len(
                    await producer.partitions_for(topic)
                )
        MESSAGES_PRODUCED.labels(topic).inc(len(records))
        by_partition: dict[int, list[Record]] = {}
        for record in records:
            by_partition.setdefault(partition_for(record[0], partitions), []).append(record)
        for partition, items in by_partition.items():
            batch = producer.create_batch()
            for key, value, headers in items:
                if batch.append(key=key, value=value, timestamp=None, headers=headers or []):
                    continue
                await self._send_batch(producer, batch, topic, partition)
                batch = producer.create_batch()  # takes its first record whatever its size
                batch.append(key=key, value=value, timestamp=None, headers=headers or [])
            await self._send_batch(producer, batch, topic, partition)

    async def _send_batch(self, producer: Any, batch: Any, topic: str, partition: int) -> None:
        outstanding: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._track(outstanding)
        try:
            delivery = await producer.send_batch(batch, topic, partition=partition)
        except BaseException as exc:
            if not outstanding.done():
                outstanding.set_exception(exc)
            raise
        delivery.add_done_callback(lambda f: _settle(outstanding, f))

    async def flush(self) -> None:
        # Everything handed over before this point belongs to events acked before the commit
        # that called us; later records are left to the next commit (no livelock).
        snapshot = list(self._unresolved)
        await super().flush()
        if snapshot:
            _, pending = await asyncio.wait(snapshot, timeout=self.flush_timeout_s)
            if pending:
                raise ProducerSendError(
                    f"{len(pending)} records not acknowledged within {self.flush_timeout_s}s"
                )
        if self._failure is not None:
            # Sticky: once a record is lost this process must never commit again.
            raise ProducerSendError(f"a produce failed: {self._failure!r}") from self._failure


def _settle(outstanding: asyncio.Future[Any], delivery: asyncio.Future[Any]) -> None:
    """Mirror a delivery's outcome onto the future `flush` waits for."""
    if outstanding.done():
        return
    if delivery.cancelled():
        outstanding.cancel()
    elif (exc := delivery.exception()) is not None:
        outstanding.set_exception(exc)
    else:
        outstanding.set_result(delivery.result())


class SafeConsumer(faust_aiokafka.Consumer):
    # How long the head of a partition may stay unacked, with nothing of it in flight, before
    # it is read again from the committed offset.
    stall_s: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.committed: dict[TP, int] = {}
        self._stalled_since: dict[TP, float] = {}

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for `tp`: never past an offset that was not acked.

        Faust's own rule lets a single missing offset at the head pass (its issue #606: with
        31 in flight and 32, 33 acked it commits 34). Here a missing head offset holds the
        commit: when the message is in flight, until it is acked; when nothing is in flight
        (seen after a partition moved: offsets delivered in the old generation, dropped, never
        acked), the partition is read again from the committed offset, which dedup makes safe.
        """
        acked = self._acked[tp]
        if len(acked) != len(set(acked)):  # after a move Faust can ack an offset twice
            acked[:] = sorted(set(acked))
        if not acked:
            self._stalled_since.pop(tp, None)
            return None
        committed = self._committed_offset.get(tp)
        # Only this generation's messages are in flight: the stream drops older ones after a
        # rebalance, and they linger in this weak set until collected.
        generation = self.app.consumer_generation_id
        in_flight = [
            m.offset
            for m in list(self._unacked_messages)
            if m.tp == tp and not m.acked and m.generation_id == generation
        ]
        head = committed if committed is not None else min(acked)
        lowest_acked = min(acked)
        if lowest_acked > head and not self._gap_covers(tp, head, lowest_acked):
            if not in_flight:
                self._heal(tp, head)
            return None
        self._stalled_since.pop(tp, None)
        if not in_flight:
            return super()._new_offset(tp)
        lowest = min(in_flight)
        held = [o for o in acked if o >= lowest]
        acked[:] = [o for o in acked if o < lowest]
        try:
            return super()._new_offset(tp) if acked else None
        finally:
            acked.extend(held)
            acked.sort()

    def _gap_covers(self, tp: TP, start: int, end: int) -> bool:
        """Whether Faust recorded [start, end) as a gap in the log (compaction), not a hole."""
        gaps = self._gap.get(tp)
        return gaps is not None and bool(gaps) and all(gaps.overlaps(o) for o in range(start, end))

    def _heal(self, tp: TP, committed: int) -> None:
        now = time.monotonic()
        since = self._stalled_since.setdefault(tp, now)
        if now - since < self.stall_s:
            return
        self._stalled_since.pop(tp, None)
        self.log.warning(
            "offset %s of %s was never acked and nothing is in flight: reading it again",
            committed,
            tp,
        )
        self.add_future(self.seek(tp, committed))

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        done: bool = await super()._commit(offsets)
        if done:
            self.committed.update(offsets)
        return done

    async def perform_seek(self) -> None:
        await super().perform_seek()
        # What the group committed before we got the partitions counts as committed too.
        for tp, offset in self._committed_offset.items():
            if offset is not None and offset > self.committed.get(tp, -1):
                self.committed[tp] = offset


class SafeTransport(faust_aiokafka.Transport):
    Producer = SafeProducer
    Consumer = SafeConsumer


def register() -> None:
    """Make `atlas-kafka://host:port` a broker URL that selects the safe transport."""
    TRANSPORTS.aliases[SCHEME] = f"{__name__}:SafeTransport"


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), which every Atlas table assumes."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`Utils.murmur2` in the Java client), as aiokafka computes it.

    The same function as `aiokafka.partitioner.murmur2` (a test compares them), twice as fast:
    the 4-byte words are read by one `struct.unpack_from`, and the masks are only where the
    32-bit arithmetic needs them. It runs for every message in and every outcome out.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    for k in struct.unpack_from(f"<{length >> 2}I", data):
        k = (k * _M) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)
