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

Which Kafka errors are which (the producer's, the agents' and the commit's):

- **Retriable** (`retriable`): Kafka's normal transitions. `NotLeaderForPartition` and
  `LeaderNotAvailable` (a leader election: a brand-new topic, a broker that restarted),
  `RequestTimedOut`, `NotEnoughReplicas`, a lost connection or a broker that does not answer
  (`KafkaConnectionError`, `NodeNotReady`), metadata not there yet (`UnknownTopicOrPartition`,
  `KafkaTimeoutError` while waiting for it or for room in the send buffer). They say nothing
  about the record, only that the cluster was briefly unable to take it. The producer is
  idempotent (`enable_idempotence`, acks=all), so aiokafka retries them itself and the broker
  drops a retry's duplicate by its sequence number; the commit gate (`flush`) waits for the
  outcome. A record batch that aiokafka could not take in time (no metadata, no room) is
  handed over again by the producer's own appender, with backoff (`SafeProducer._append`);
  an agent whose batch raised one runs the same batch again with backoff
  (`streams.agents`): dedup makes a re-run re-send effects, never re-apply a change.
- **Fatal**: everything else, and a retriable error that outlived the delivery timeout
  (`kafka_delivery_timeout_s`, aiokafka's batch life). A record too large, an unknown or
  unauthorised topic, a fenced or out-of-sequence producer: retrying cannot make Kafka take the
  record. It is lost, so no offset may ever move past it: the failure is sticky, every later
  commit of this process is refused, and the worker stops. Nothing committed is lost; whoever
  owns the partitions next reads the uncommitted input again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import backoff
from aiokafka.errors import (
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)
from faust.exceptions import ProducerSendError
from faust.tables.recovery import RebalanceAgain
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify
from murmurhash2 import murmurhash2 as _murmurhash2

from streams.batches import BatchMessage, BatchScheduler, RecordBatch
from streams.metrics import MESSAGES_PRODUCED
from streams.resilience import RETRIES

SCHEME = "atlas-kafka"

Record = tuple[bytes, bytes, list[tuple[str, bytes]] | None]  # key, value, headers


def retriable(exc: BaseException) -> bool:
    """Whether `exc` is one of Kafka's transitions, worth trying again (see the module notes).

    aiokafka marks Kafka's retriable error codes with `retriable`; a connection that failed,
    and a wait for metadata or for room in the send buffer that timed out, are retriable too.
    Faust wraps a failed send in `ProducerSendError`: its cause decides.
    """
    if isinstance(exc, ProducerSendError) and exc.__cause__ is not None:
        return retriable(exc.__cause__)
    if isinstance(exc, KafkaConnectionError | KafkaTimeoutError | ConnectionError | TimeoutError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


# How many record batches (each at most producer_max_batch_size) may wait to be appended.
APPEND_QUEUE = 64


@dataclass(slots=True)
class _Queued:
    """A record batch on its way into aiokafka, and the future `flush` waits on for it."""

    topic: str
    partition: int
    batch: Any
    then: Callable[[asyncio.Future[Any]], None] | None = None
    outstanding: asyncio.Future[Any] = field(init=False)


class SafeProducer(faust_aiokafka.Producer):
    # How often `untracked` may ask for fresh metadata while topics are missing from it.
    refresh_every_s: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._unresolved: set[asyncio.Future[Any]] = set()
        self._failure: BaseException | None = None
        self._partition_counts: dict[str, int] = {}
        self._refreshed_at = -math.inf
        # Record batches waiting to be appended to aiokafka, in order (`send_many`).
        self._appends: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=APPEND_QUEUE)
        self._appender: asyncio.Future[None] | None = None
        # A record is settled within the delivery timeout (aiokafka's request timeout bounds a
        # batch's life); the margin covers its last request.
        self.flush_timeout_s = float(self.request_timeout) + 30.0
        self._append = backoff.on_exception(
            backoff.expo,
            Exception,
            giveup=lambda exc: not retriable(exc),
            max_time=float(self.request_timeout),
            jitter=backoff.full_jitter,
            factor=0.1,
            max_value=5.0,
            logger=None,
            on_backoff=lambda details: RETRIES.labels("kafka").inc(),
        )(self._append_once)

    def _settings_extra(self) -> Mapping[str, Any]:
        # Idempotent: aiokafka retries a retriable refusal for as long as the batch lives
        # (the request timeout, set to the delivery timeout), and a retry cannot duplicate.
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}

    def untracked(self, topics: Iterable[str]) -> list[str]:
        """Those of `topics` this producer cannot place a key on yet; asks for their metadata.

        The table router hashes a key on this producer's metadata (Faust's `key_partition`),
        and a record waits for its partition's leader: a topic is placeable once the metadata
        has its partitions, each with a leader. Only call it with topics that exist: a
        metadata request names them, and a broker that auto-creates topics would create them.
        """
        producer = self._producer
        if producer is None:
            return list(topics)
        client = producer.client
        missing = [t for t in topics if not _placeable(client.cluster, t)]
        if missing:
            for topic in missing:
                client.add_topic(topic)
            self.refresh_metadata()
        return missing

    def refresh_metadata(self) -> None:
        """Start a metadata refresh, at most once every `refresh_every_s`."""
        producer = self._producer
        now = time.monotonic()
        if producer is None or now - self._refreshed_at < self.refresh_every_s:
            return
        self._refreshed_at = now
        producer.client.force_metadata_update()

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
        self,
        topic: str,
        records: Sequence[Record],
        partitions: int | None = None,
        *,
        partition: int | None = None,
        on_delivered: Callable[[int], None] | None = None,
    ) -> None:
        """Hand records to aiokafka in bulk, one record batch per partition, in order.

        The bulk path for a batch's outputs and changelog records: Faust's per-record send
        path (a buffer, a future and a callback chain per record) is most of the cost of an
        output record. Records go to `partition`, or to their key's murmur2 partition.
        `on_delivered(offset)` is called with the offset of the last record once Kafka has
        acknowledged them all (a partition's batches are acknowledged in order).

        It returns once the batches are queued, not appended: aiokafka takes a partition's
        next batch only after the previous one left in a request, and an agent that waited for
        that would wait a broker round trip per batch. One task appends them in the order they
        came (`_append_in_order`), so a partition's records keep their order; a full queue
        makes the caller wait (backpressure). Each batch is tracked from the moment it is
        queued, so `flush` (and with it the commit) waits for it.
        """
        if not records:
            return
        producer = self._ensure_producer()
        MESSAGES_PRODUCED.labels(topic).inc(len(records))
        by_partition: Mapping[int, Sequence[Record]]
        if partition is not None:
            by_partition = {partition: records}
        else:
            if partitions is None:
                partitions = self._partition_counts.get(topic)
                if partitions is None:
                    partitions = self._partition_counts[topic] = len(
                        await producer.partitions_for(topic)
                    )
            grouped: dict[int, list[Record]] = {}
            for record in records:
                grouped.setdefault(partition_for(record[0], partitions), []).append(record)
            by_partition = grouped
        for number, items in by_partition.items():
            batch = producer.create_batch()
            for key, value, headers in items:
                if batch.append(key=key, value=value, timestamp=None, headers=headers or []):
                    continue
                await self._queue_batch(_Queued(topic, number, batch))
                batch = producer.create_batch()  # takes its first record whatever its size
                batch.append(key=key, value=value, timestamp=None, headers=headers or [])
            last = _Queued(topic, number, batch)
            if on_delivered is not None:
                last.then = partial(_delivered, batch.record_count(), on_delivered)
            await self._queue_batch(last)

    async def _queue_batch(self, item: _Queued) -> None:
        failure = self._failure
        if failure is not None:
            # Sticky: nothing after a lost record may be sent, and the caller must stop. Not
            # retriable (no cause attached): retrying cannot bring the lost record back.
            raise ProducerSendError(f"an earlier produce failed: {failure!r}")
        item.outstanding = asyncio.get_running_loop().create_future()
        self._track(item.outstanding)
        if self._appender is None or self._appender.done():
            self._appender = asyncio.ensure_future(self._append_in_order())
        try:
            await self._appends.put(item)
        except BaseException as exc:
            if not item.outstanding.done():
                item.outstanding.set_exception(exc)
            raise

    async def _append_in_order(self) -> None:
        """Append the queued batches to aiokafka, one after the other.

        After a batch is lost, none behind it is appended: each fails in its turn, so no
        later delivery reports a changelog partition persisted past the lost batch.
        """
        queue = self._appends
        while True:
            item = await queue.get()
            outstanding = item.outstanding
            try:
                if self._failure is not None:
                    raise ProducerSendError(f"an earlier produce failed: {self._failure!r}")
                delivery = await self._append(item)
            except BaseException as exc:
                task = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                    if not outstanding.done():
                        outstanding.cancel()
                    raise  # the producer stops
                # Lost: `flush` refuses this and every later commit.
                if self._failure is None:
                    self._failure = exc
                if not outstanding.done():
                    outstanding.set_exception(exc)
                continue
            finally:
                queue.task_done()
            delivery.add_done_callback(partial(_settle, outstanding))
            if item.then is not None:
                delivery.add_done_callback(item.then)

    async def appended(self) -> None:
        """Return once every batch queued so far is in aiokafka's hands."""
        await self._appends.join()

    async def _append_once(self, item: _Queued) -> asyncio.Future[Any]:
        """aiokafka's `send_batch` (`_append` retries it while Kafka is in a transition).

        It fails before the batch is taken (metadata, or room, not there in time), so the
        same batch can be handed over again; the agents' retry would run the whole batch.
        """
        producer = self._ensure_producer()
        delivery = await producer.send_batch(item.batch, item.topic, partition=item.partition)
        return cast("asyncio.Future[Any]", delivery)

    async def on_stop(self) -> None:
        # Faust flushed before stopping the producer; what is still queued goes to aiokafka
        # (which delivers it as it stops), within the flush timeout.
        if self._appender is not None and not self._appender.done():
            try:
                await asyncio.wait_for(self.appended(), min(self.flush_timeout_s, 10.0))
            except TimeoutError:
                self.log.warning("stopping with record batches not handed to aiokafka")
            self._appender.cancel()
        await super().on_stop()

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


def _placeable(cluster: Any, topic: str) -> bool:
    partitions = cluster.partitions_for_topic(topic)
    return bool(partitions) and cluster.available_partitions_for_topic(topic) == partitions


def _delivered(count: int, then: Callable[[int], None], delivery: asyncio.Future[Any]) -> None:
    if delivery.cancelled() or delivery.exception() is not None:
        return  # `flush` reports it
    metadata = delivery.result()
    if metadata is not None:
        then(metadata.offset + count - 1)


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
        # Where each partition was last seeked to, and the last offset handed to a stream since.
        self.seeked_to: dict[TP, int] = {}
        self.delivered_to: dict[TP, int] = {}
        self._stalled_since: dict[TP, float] = {}
        self._seeked_generation = -1  # the generation whose closing seek has run
        # The batch runtime (streams.batches): the app names its co-partitioned input groups.
        app = self.app
        groups: list[tuple[str, ...]] = getattr(app, "input_groups", list)()
        settings = getattr(app, "settings", None)
        self.batches = BatchScheduler(
            groups,
            lag=self.fetch_lag,
            assigned=self._assigned_now,
            generation=lambda: int(app.consumer_generation_id),
            idle_s=(settings.input_idle_ms if settings else 0) / 1000.0,
            max_records=settings.batch_max if settings else 10_000,
            hold=self._holding,
        )
        self.scheduler = self.batches  # type: ignore[assignment]  # Faust's scheduler hook

    def _holding(self) -> bool:
        """Whether input records must stay buffered: a rebalance has yet to end with its seek."""
        return bool(self.app.rebalancing) or self._seek_pending()

    def _seek_pending(self) -> bool:
        """Whether this generation's closing seek (`perform_seek`) has yet to run."""
        return self._seeked_generation != self.app.consumer_generation_id

    def _to_message(self, tp: TP, record: Any) -> Any:
        if type(record) is RecordBatch:
            return BatchMessage(tp, record)
        return super()._to_message(tp, record)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        """Faust's fetch loop, for batches too: a batch read moves the read offset to its end.

        Faust's drain loop sets a partition's read offset to the offset of the message it
        delivered, a batch's first; left there, the next batch would look like a gap in the
        log. While a task waits for a lagging input, the fetch returns by its deadline.
        """
        app = self.app
        if self._seek_pending() and not app.rebalancing and not app.in_recovery:
            # Faust went on without its seek (it timed out, or the rebalance was cut short).
            self.log.warning("the rebalance ended without a seek to the committed offsets")
            with contextlib.suppress(RebalanceAgain):  # the new rebalance's recovery seeks
                await self.perform_seek()
        hint = self.batches.wait_hint()
        if hint is not None:
            timeout = min(timeout, max(hint, 0.005))
        read_offset = self._read_offset
        async for tp, message in super().getmany(timeout):
            yield tp, message
            if read_offset.get(tp) == message.offset:  # delivered (not dropped as old)
                last = message.last_offset if type(message) is BatchMessage else message.offset
                read_offset[tp] = self.delivered_to[tp] = last

    def fetch_lag(self, tp: TP) -> int | None:
        """Records the broker has for `tp` past what was fetched; None until a fetch answers."""
        try:
            consumer = self._thread._ensure_consumer()
            state = consumer._subscription.subscription.assignment.state_value(tp)
        except Exception:  # not started, or not assigned (any more)
            return None
        if state is None or state.highwater is None or not state.has_valid_position:
            return None
        return int(state.highwater - state.position)

    def _assigned_now(self) -> set[TP]:
        try:
            return set(self.assignment())
        except Exception:  # not started; or the assignment changed while it was read
            return set()

    async def seek(self, partition: TP, offset: int) -> None:
        self.batches.forget([partition])  # buffered records are read again from `offset`
        self.seeked_to[partition] = offset
        self.delivered_to.pop(partition, None)
        await super().seek(partition, offset)

    def ack(self, message: Any) -> bool:
        """Faust's ack, for a batch's every offset; a message of an older generation is released.

        Its partition was reassigned since it was delivered, and the partition's owner reads
        it again from the committed offset; recording its offset here could let a commit of
        this generation pass it without anyone having applied it.
        """
        if message.generation_id != self.app.consumer_generation_id:
            self.release([message])
            return False
        if type(message) is BatchMessage:
            return self._ack_batch(message)
        acked: bool = super().ack(message)
        return acked

    def _ack_batch(self, message: BatchMessage) -> bool:
        """`Consumer.ack` for each record of the batch, as one step (under Faust's ack lock)."""
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            tp = message.tp
            if not self.app.topics.acks_enabled_for(message.topic):
                return False
            try:
                committed = self._committed_offset[tp]
                acked_index = self._acked_index[tp]
                acked = self._acked[tp]
                n = 0
                for record in message.records:
                    offset = record.offset
                    if (committed is None or offset >= committed) and offset not in acked_index:
                        acked_index.add(offset)
                        acked.append(offset)
                        n += 1
                self._unacked_messages.discard(message)
                # Faust's commit-every counts acks; a batch counts once (`faust_options`).
                self._n_acked += 1 if n else 0
                return n > 0
            finally:
                notify(self._waiting_for_ack)

    def release(self, messages: Iterable[Any]) -> None:
        """Let go of messages that will not be applied here, without acking their offsets.

        Marked done so that a rebalance's `wait_empty` stops waiting for them and a later ack
        of theirs records nothing; their offsets stay uncommitted.
        """
        for message in messages:
            message.acked = True
            self._unacked_messages.discard(message)
        notify(self._waiting_for_ack)

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
            self._heal_if_read_ahead(tp)
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
        # Without a committed offset the head is where the partition was seeked to: it was read
        # from there.
        head = committed if committed is not None else self.seeked_to.get(tp, min(acked))
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

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        # Faust looks only at partitions with acked offsets; one whose read records were all
        # released or dropped (a fenced batch, a batch fetched across a rebalance's seek) has
        # none, and would wait for its next record forever: look at those too.
        pending = set(super()._filter_tps_with_pending_acks(topics))
        for tp in list(self.delivered_to):
            if topics is None or tp in topics or tp.topic in topics:
                pending.add(tp)
        return iter(pending)

    def _heal_if_read_ahead(self, tp: TP) -> None:
        """Read records that are neither acked nor in flight: read them again (after stall_s)."""
        read, committed = self.delivered_to.get(tp), self._committed_offset.get(tp)
        if committed is None:
            committed = self.seeked_to.get(tp)
        generation = self.app.consumer_generation_id
        if (
            read is None
            or committed is None
            or read < committed
            or any(
                m.tp == tp and not m.acked and m.generation_id == generation
                for m in list(self._unacked_messages)
            )
        ):
            self._stalled_since.pop(tp, None)
            return
        self._heal(tp, committed)

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

    async def _committed_or_start(
        self, assigned: list[Any]
    ) -> tuple[dict[Any, int | None], Mapping[Any, int]]:
        """Each partition's committed offset, and where the reset policy starts those without."""
        consumer = self._thread._ensure_consumer()
        # One request for all (aiokafka's `committed` asks per partition); -1: none committed.
        found = await consumer._coordinator.fetch_committed_offsets(assigned)
        committed: dict[Any, int | None] = {}
        for tp in assigned:
            offset = found[tp].offset if tp in found else -1
            committed[tp] = None if offset == -1 else offset
        fresh = [tp for tp, offset in committed.items() if offset is None]
        start: Mapping[Any, int] = {}
        if fresh:
            earliest = self.app.conf.consumer_auto_offset_reset == "earliest"
            find = consumer.beginning_offsets if earliest else consumer.end_offsets
            start = await find(fresh)
        return committed, start

    async def perform_seek(self) -> None:
        """Faust's seek to the committed offsets at the end of a rebalance, for every partition.

        Faust's clears the agents' queues for the new assignment and relies on this seek to
        read what they held again. aiokafka's `seek_to_committed` moves only a partition whose
        committed offset is above 0, so a partition the group never committed (a new group,
        or a new topic) kept its position past the records just dropped. Here every assigned
        partition moves, to its committed offset or, without one, to where the reset policy
        starts; and the buffered records are dropped in the same step (no await between), so
        no record fetched before the seek is handed over after it.
        """
        consumer = self._thread._ensure_consumer()
        generation = self.app.consumer_generation_id
        changelogs = self.app.tables.changelog_topics  # Faust's recovery places those
        assigned = [tp for tp in consumer.assignment() if tp.topic not in changelogs]
        # The aiokafka consumer lives on the consumer thread's loop: ask it there.
        committed, start = await self._thread.call_thread(self._committed_or_start, assigned)
        now_assigned = {tp for tp in consumer.assignment() if tp.topic not in changelogs}
        if generation != self.app.consumer_generation_id or now_assigned != set(assigned):
            # Another rebalance came in between. Faust's recovery starts again on this (it
            # must not go on to end the rebalance), and the new one's seek follows.
            raise RebalanceAgain()
        self.batches.forget()
        self.delivered_to.clear()
        seeked = {
            ensure_TP(tp): offset if offset is not None else start[tp]
            for tp, offset in committed.items()
        }
        try:
            for tp in committed:
                consumer.seek(tp, seeked[ensure_TP(tp)])
        except IllegalStateError as exc:  # the assignment moved under the seek
            raise RebalanceAgain() from exc
        self.seeked_to = seeked
        # Faust's bookkeeping, as its perform_seek keeps it.
        self._read_offset.update(
            {
                ensure_TP(tp): offset if offset is not None and offset >= 0 else None
                for tp, offset in committed.items()
            }
        )
        self._committed_offset.update(
            {
                ensure_TP(tp): offset or None
                for tp, offset in committed.items()
                if offset is not None
            }
        )
        # What the group committed before we got the partitions counts as committed too.
        for tp, offset in self._committed_offset.items():
            if offset is not None and offset > self.committed.get(tp, -1):
                self.committed[tp] = offset
        self._seeked_generation = generation


class SafeTransport(faust_aiokafka.Transport):
    Producer = SafeProducer
    Consumer = SafeConsumer


def register() -> None:
    """Make `atlas-kafka://host:port` a broker URL that selects the safe transport."""
    TRANSPORTS.aliases[SCHEME] = f"{__name__}:SafeTransport"


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2), which every Atlas table assumes."""
    return (_murmurhash2(key, _SEED) & 0x7FFFFFFF) % partitions


_SEED = 0x9747B28C  # the seed of Kafka's murmur2 (`Utils.murmur2` in the Java client)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2, as aiokafka computes it (a test compares them), in native code.

    It runs for every message in and every outcome out: `murmurhash2`'s compiled function
    takes about 0.5 µs where a Python loop over the 4-byte words takes 4.
    """
    return int(_murmurhash2(data, _SEED))
