"""Faust's Kafka transport, made safe for "state change, then sends, then offset commit".

Read from faust-streaming 0.15.3: before committing, the consumer awaits `producer.flush()`, but
that flush can return with records still queued or in flight, never raises when a delivery
failed, and a failed changelog send is only logged. A committed offset can therefore run ahead
of a table write or an output that never reached Kafka, and a SIGKILL then loses it.

`SafeProducer` tracks every record from the moment it is handed over (table changelog writes go
through `send_soon`, outputs through `send`) until Kafka acknowledges it. Its `flush`, the last
step before every commit, waits for all records handed over so far and raises if any failed,
now or earlier: the commit is abandoned and the worker stops, so the uncommitted input is read
again by whoever owns the partition next.

`SafeConsumer` caps a commit at the lowest offset still in flight on its partition (Faust issue
#606 can commit past an in-flight message when later ones are acked), and remembers the offsets
that were really committed, for the dedup marks' archiving (`tables.ledger`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from aiokafka.partitioner import murmur2
from faust.exceptions import ProducerSendError
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

SCHEME = "atlas-kafka"


class SafeProducer(faust_aiokafka.Producer):
    flush_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._unresolved: set[asyncio.Future[Any]] = set()
        self._failure: BaseException | None = None

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

        def settle(f: asyncio.Future[Any]) -> None:
            if outstanding.done():
                return
            if f.cancelled():
                outstanding.cancel()
            elif (exc := f.exception()) is not None:
                outstanding.set_exception(exc)
            else:
                outstanding.set_result(f.result())

        cast("asyncio.Future[Any]", delivery).add_done_callback(settle)
        return delivery

    def fail(self, reason: BaseException) -> None:
        """Refuse every later commit of this process (a batch failed half-way)."""
        if self._failure is None:
            self._failure = reason

    @property
    def outstanding(self) -> int:
        return len(self._unresolved)

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


class SafeConsumer(faust_aiokafka.Consumer):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.committed: dict[TP, int] = {}

    def _new_offset(self, tp: TP) -> int | None:
        # Only this generation's messages are in flight: the stream drops older ones unacked
        # after a rebalance, and they linger in this weak set until collected.
        generation = self.app.consumer_generation_id
        lowest = min(
            (
                m.offset
                for m in list(self._unacked_messages)
                if m.tp == tp and not m.acked and m.generation_id == generation
            ),
            default=None,
        )
        if lowest is None:
            return super()._new_offset(tp)
        acked = self._acked[tp]
        held = [o for o in acked if o >= lowest]
        if held:
            acked[:] = [o for o in acked if o < lowest]
        try:
            return super()._new_offset(tp)
        finally:
            if held:
                acked.extend(held)
                acked.sort()

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
    return int(murmur2(key) & 0x7FFFFFFF) % partitions
