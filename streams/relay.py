"""The transactional-outbox relay: unpublished `outbox` rows to Kafka, then marked published.

Leadership: exactly one relay publishes per cluster. It holds the PostgreSQL session-level
advisory lock `RELAY_LOCK_ID` on a dedicated connection (not from the pool) for as long as it
leads; every other relay stands by and tries the lock every `poll_s`. A leader that dies (SIGKILL,
a lost host: the session's TCP keepalives below end it) loses its session and with it the lock,
and a standby takes over at its next try. A leader whose connection breaks stops publishing,
drops leadership, reconnects with capped, fully jittered exponential backoff and competes again.

Order of one round, which at-least-once delivery depends on:
  1. read unpublished rows oldest first (`created_at`; never sequence positions: a sequence
     value is taken before commit, so position polling skips rows that commit late);
  2. hand them all to the idempotent producer (acks=all) and await every delivery;
  3. mark published, on the lock's connection, only the rows Kafka acknowledged.
A crash or a lost connection between 2 and 3 sends rows again: consumers dedup by `event-id`.
Rows of one aggregate share a key, hence a partition, and the idempotent producer keeps the
order of a partition; a failed row stays unpublished and goes out again at a later round.

Wake-ups come by LISTEN on `atlas_outbox` (the write path NOTIFYs in its transaction), with a
poll every `poll_s` as the fallback. The leader also reaps published rows past their retention
and expired idempotency keys, in bounded chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import asyncpg
import backoff
import orjson
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError
from mode import Service
from prometheus_client import Counter, Gauge, Histogram

from streams.logs import get_logger
from streams.resilience import Breakers
from streams.settings import Settings
from streams.tracing import CORRELATION_ID, TRACEPARENT, log_fields, publishing
from web.metrics import REGISTRY

log = get_logger(__name__)

RELAY_LOCK_ID = 0x61746C61735F6F62  # "atlas_ob": the relay's advisory lock, one per database
CHANNEL = "atlas_outbox"
EVENT_ID_HEADER = "event-id"
EVENT_TYPE_HEADER = "event-type"
# Ask the server to probe an idle relay session, so that a leader whose host vanished without
# closing its socket loses the lock in ~5 + 2 * 3 s rather than the kernel's two hours.
_KEEPALIVES = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}

SELECT_UNPUBLISHED = """
SELECT id, aggregate_id, event_type, topic, payload, headers
FROM outbox WHERE published_at IS NULL AND failed_at IS NULL ORDER BY created_at LIMIT $1
"""
MARK_PUBLISHED = """
UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[]) AND published_at IS NULL
"""
MARK_FAILED = """
UPDATE outbox SET failed_at = now(), failure = $2 WHERE id = $1 AND published_at IS NULL
"""
REAP_PUBLISHED = """
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $2)
    LIMIT $1)
"""
REAP_EXPIRED_KEYS = """
DELETE FROM idempotency_keys WHERE (client_id, idempotency_key) IN (
    SELECT client_id, idempotency_key FROM idempotency_keys WHERE expires_at < now() LIMIT $1)
"""

PUBLISHED = Counter(
    "atlas_outbox_published", "Outbox rows published to Kafka and marked.", registry=REGISTRY
)
PUBLISH_FAILURES = Counter(
    "atlas_outbox_publish_failures",
    "Outbox rows whose publish failed (left unpublished, retried later).",
    registry=REGISTRY,
)
SET_ASIDE = Counter(
    "atlas_outbox_failed",
    "Outbox rows set aside because they can never be published as they are (see failed_at).",
    registry=REGISTRY,
)
PUBLISH_DURATION = Histogram(
    "atlas_outbox_publish_duration_seconds",
    "Time to send one batch of outbox rows and await every delivery.",
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LEADER = Gauge(
    "atlas_relay_leader", "1 while this process's outbox relay leads, else 0.", registry=REGISTRY
)
REAPED = Counter(
    "atlas_outbox_reaped",
    "Rows deleted by the relay's reaper, by table.",
    ["table"],
    registry=REGISTRY,
)


class Row(Protocol):
    def __getitem__(self, key: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One outbox row as the Kafka record it becomes."""

    event_id: UUID
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def header_value(value: object) -> bytes:
    """A header from the row's `headers` object: strings as UTF-8, anything else as JSON."""
    return value.encode() if isinstance(value, str) else orjson.dumps(value)


def to_record(row: Row) -> OutboxRecord:
    """Key = aggregate id, value = payload as JSON, headers = the row's plus event id and type.

    The row's own id and event type win over same-named entries of its `headers` object.
    """
    event_id = UUID(str(row["id"]))
    extra = row["headers"] if row["headers"] is not None else {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"outbox row {event_id}: headers is not a JSON object")
    reserved = {EVENT_ID_HEADER, EVENT_TYPE_HEADER}
    headers = [(str(k), header_value(v)) for k, v in extra.items() if str(k) not in reserved]
    headers.append((EVENT_ID_HEADER, str(event_id).encode()))
    headers.append((EVENT_TYPE_HEADER, str(row["event_type"]).encode()))
    return OutboxRecord(
        event_id=event_id,
        topic=str(row["topic"]),
        key=str(row["aggregate_id"]).encode(),
        value=orjson.dumps(row["payload"]),
        headers=headers,
    )


def deleted_count(status: str) -> int:
    """Rows a `DELETE n` command status reports."""
    verb, _, count = status.rpartition(" ")
    return int(count) if verb.endswith("DELETE") and count.isdigit() else 0


def more_to_drain(fetched: int, published: int, batch: int) -> bool:
    """Only a full batch that went out whole may have more behind it.

    A batch with a row left behind ends the round: fetching again would return the same rows.
    """
    return fetched >= batch and published == fetched


class RetryDelays:
    """Capped exponential delays with full jitter (the `backoff` package), reset on success."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.reset()

    def reset(self) -> None:
        self._delays = backoff.expo(factor=self.first_s, max_value=self.max_s)
        next(self._delays)  # backoff's generators yield None first

    def next(self) -> float:
        return backoff.full_jitter(next(self._delays))


@dataclass
class PublishOutcome:
    delivered: list[UUID]
    # Rows that can never become a record as they are, with the reason: set aside (failed_at),
    # so they no longer hold up the rows behind them.
    failed: list[tuple[UUID, str]]
    kafka_error: BaseException | None  # the first Kafka failure; undelivered rows are retried


# A row that fails one of these can never be sent as it is: the others go on without it.
_ROW_ERRORS = (TypeError, ValueError, MessageSizeTooLargeError)
# What Kafka answers for a batch holding a record it will never take, whatever the retries.
_RECORD_REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError)


LIST_FAILED = """
SELECT id, created_at, failed_at, aggregate_id, event_type, topic, failure,
       octet_length(payload::text) AS payload_bytes
FROM outbox WHERE failed_at IS NOT NULL AND published_at IS NULL ORDER BY failed_at
"""
RETRY_FAILED = """
UPDATE outbox SET failed_at = NULL, failure = NULL
WHERE failed_at IS NOT NULL AND published_at IS NULL AND ($1::uuid[] IS NULL OR id = ANY($1))
RETURNING id
"""


async def failed_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The rows the relay set aside as unpublishable, oldest failure first."""
    return list(await conn.fetch(LIST_FAILED))


async def retry_failed(conn: asyncpg.Connection, ids: Sequence[UUID] | None) -> list[UUID]:
    """Give set-aside rows (these, or all with None) back to the relay; the ids given back."""
    given_back = await conn.fetch(RETRY_FAILED, None if ids is None else list(ids))
    if given_back:
        await conn.execute("SELECT pg_notify($1, '')", CHANNEL)
    return [r["id"] for r in given_back]


class ConnectionLost(Exception):
    """The relay's dedicated PostgreSQL connection closed under it."""


def _describe(exc: BaseException) -> str:
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


class OutboxRelay(Service):
    """Publishes the outbox to Kafka while it holds the relay lock; stands by otherwise."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch: int = 500,
        poll_s: float = 1.0,
        publish_timeout_s: float = 10.0,
        reap_every_s: float = 60.0,
        published_retention_s: float = 24 * 3600.0,
        reap_chunk: int = 1000,
        reap_max_chunks: int = 100,
        retry_first_s: float = 0.25,
        retry_max_s: float = 30.0,
        linger_ms: int = 5,
        lock_id: int = RELAY_LOCK_ID,
        channel: str = CHANNEL,
        breakers: Breakers | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.breakers = breakers or Breakers()
        self.batch = batch
        self.poll_s = poll_s
        self.publish_timeout_s = publish_timeout_s
        self.reap_every_s = reap_every_s
        self.published_retention_s = published_retention_s
        self.reap_chunk = reap_chunk
        self.reap_max_chunks = reap_max_chunks
        self.linger_ms = linger_ms
        self.lock_id = lock_id
        self.channel = channel
        self._pg_delays = RetryDelays(retry_first_s, retry_max_s)
        self._kafka_delays = RetryDelays(retry_first_s, retry_max_s)
        self._producer: AIOKafkaProducer | None = None
        self._runner: asyncio.Future[Any] | None = None
        self._leader = False

    @property
    def is_leader(self) -> bool:
        return self._leader

    async def on_start(self) -> None:
        self._runner = self.add_future(self._run())

    async def on_stop(self) -> None:
        # Stop the loop first (its `finally` closes the connection, releasing the lock), then
        # the producer: nothing sends once leadership is given up.
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait({self._runner}, timeout=2 * self.settings.postgres_timeout_s)
        await self._drop_producer(flush_s=self.settings.kafka_timeout_s)
        log.info("outbox relay stopped")

    # -- leadership --------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self.should_stop:
            try:
                conn = await self._connect()
            except Exception as exc:
                await self.breakers.observe("postgres", exc)
                delay = self._pg_delays.next()
                log.warning("relay cannot connect", error=_describe(exc), retry_in_s=delay)
                await self.sleep(delay)
                continue
            try:
                await self._compete(conn)
            except Exception as exc:
                if _is_connection_error(exc):
                    log.warning("relay connection failed", error=_describe(exc))
                else:
                    log.exception("relay failed", error=_describe(exc))
            finally:
                await self._close(conn)
            if not self.should_stop:
                await self.sleep(self._pg_delays.next())

    async def _connect(self) -> asyncpg.Connection:
        timeout = self.settings.postgres_timeout_s
        conn: asyncpg.Connection = await asyncpg.connect(
            self.settings.database_url.get_secret_value(),
            timeout=timeout,
            command_timeout=timeout,
            server_settings={"application_name": f"{self.settings.app_name}-relay", **_KEEPALIVES},
        )
        try:
            await conn.set_type_codec(
                "jsonb",
                schema="pg_catalog",
                encoder=lambda v: orjson.dumps(v).decode(),
                decoder=orjson.loads,
            )
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _close(self, conn: asyncpg.Connection) -> None:
        if conn.is_closed():
            return
        try:
            await conn.close(timeout=self.settings.postgres_timeout_s)
        except Exception:
            conn.terminate()

    async def _compete(self, conn: asyncpg.Connection) -> None:
        timeout = self.settings.postgres_timeout_s
        log.info("relay standing by", lock_id=self.lock_id)
        while not self.should_stop:
            if await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", self.lock_id, timeout=timeout
            ):
                await self._lead(conn)
                return
            self._pg_delays.reset()
            await self.sleep(self.poll_s)

    def _set_leader(self, leading: bool, conn: asyncpg.Connection, reason: str = "") -> None:
        if leading == self._leader:
            return
        self._leader = leading
        fields = {"lock_id": self.lock_id, "backend_pid": conn.get_server_pid()}
        if leading:
            LEADER.inc()
            log.info("relay leadership acquired", **fields)
            return
        LEADER.dec()
        if self.should_stop:
            log.info("relay leadership released", **fields)
        else:
            log.warning("relay leadership lost", reason=reason, **fields)

    async def _lead(self, conn: asyncpg.Connection) -> None:
        wake = asyncio.Event()

        def on_wake(*_: object) -> None:  # a NOTIFY, or the connection closing
            wake.set()

        await conn.add_listener(self.channel, on_wake)
        conn.add_termination_listener(on_wake)
        self._set_leader(True, conn)
        reason = ""
        next_reap = time.monotonic()
        try:
            while not self.should_stop:
                if conn.is_closed():
                    raise ConnectionLost("the relay's PostgreSQL connection closed")
                wake.clear()
                kafka_ok = await self._round(conn)
                self._pg_delays.reset()
                if time.monotonic() >= next_reap:
                    await self._reap(conn)
                    next_reap = time.monotonic() + self.reap_every_s
                if kafka_ok:
                    self._kafka_delays.reset()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self.poll_s)
                else:
                    # Back off, deaf to NOTIFY: a busy write path must not hammer a broker
                    # that is down.
                    await self.sleep(self._kafka_delays.next())
        except BaseException as exc:
            reason = _describe(exc)
            raise
        finally:
            self._set_leader(False, conn, reason)
            conn.remove_termination_listener(on_wake)

    # -- publishing ---------------------------------------------------------------------------

    async def _round(self, conn: asyncpg.Connection) -> bool:
        """Publish until the backlog is drained or Kafka fails; False if Kafka failed."""
        timeout = self.settings.postgres_timeout_s
        kafka_ok = True
        while kafka_ok:
            rows = await conn.fetch(SELECT_UNPUBLISHED, self.batch, timeout=timeout)
            if not rows:
                break
            started = time.perf_counter()
            outcome = await self._publish(rows)
            PUBLISH_DURATION.observe(time.perf_counter() - started)
            await self.breakers.observe("kafka", outcome.kafka_error)
            if outcome.delivered:
                await conn.execute(MARK_PUBLISHED, outcome.delivered, timeout=timeout)
                PUBLISHED.inc(len(outcome.delivered))
            if outcome.failed:
                await conn.executemany(MARK_FAILED, outcome.failed, timeout=timeout)
                SET_ASIDE.inc(len(outcome.failed))
            PUBLISH_FAILURES.inc(len(rows) - len(outcome.delivered))
            if outcome.kafka_error is not None:
                kafka_ok = False
                log.warning(
                    "outbox publish failed",
                    rows=len(rows) - len(outcome.delivered) - len(outcome.failed),
                    published=len(outcome.delivered),
                    error=_describe(outcome.kafka_error),
                )
                # A fresh producer next time: this one may hold batches it retries forever
                # (idempotent batches never expire) or a sender that died.
                await self._drop_producer(flush_s=0)
            done = len(outcome.delivered) + len(outcome.failed)  # neither is fetched again
            if not more_to_drain(len(rows), done, self.batch):
                break
        return kafka_ok

    async def _publish(self, rows: Sequence[Row]) -> PublishOutcome:
        """Send every row, await the deliveries; report which ones Kafka acknowledged.

        Kafka refuses a record it will never take (over the topic's size limit) by failing the
        whole batch the record was sent in, innocent neighbours included: the rows of such a
        batch are sent again one at a time, and only a row refused on its own is set aside.
        Those re-sent rows land after any later rows of the round that Kafka took: in that
        (alerting) case an aggregate's rows can leave the outbox out of their written order.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout_s
        sent: list[tuple[Row, asyncio.Future[Any]]] = []
        failed: list[tuple[UUID, str]] = []
        error: BaseException | None = None
        try:
            async with asyncio.timeout_at(deadline):
                producer = await self._ready_producer()
                for row in rows:
                    if (delivery := await self._send(producer, row, failed)) is not None:
                        sent.append((row, delivery))
        except Exception as exc:  # Kafka unreachable, metadata timeout, the deadline
            error = exc
        delivered, refused, error = await _settle(sent, deadline, error, self.publish_timeout_s)
        if refused and error is None:
            try:
                async with asyncio.timeout_at(deadline):
                    error = await self._send_alone(
                        [row for row, _ in refused], deadline, delivered, failed
                    )
            except Exception as exc:  # the deadline
                error = exc
        return PublishOutcome([row["id"] for row in delivered], failed, error)

    async def _send_alone(
        self,
        rows: list[Row],
        deadline: float,
        delivered: list[Row],
        failed: list[tuple[UUID, str]],
    ) -> BaseException | None:
        """Send `rows` one at a time (each in a batch of its own); set aside those refused."""
        producer = await self._ready_producer()
        for row in rows:
            if (delivery := await self._send(producer, row, failed)) is None:
                continue
            ok, refused, error = await _settle(
                [(row, delivery)], deadline, None, self.publish_timeout_s
            )
            delivered += ok
            for _, refusal in refused:
                _set_aside(failed, row, refusal)
            if error is not None:
                return error
        return None

    async def _send(
        self, producer: AIOKafkaProducer, row: Row, failed: list[tuple[UUID, str]]
    ) -> asyncio.Future[Any] | None:
        """Hand one row to the producer: its delivery, or None if it was set aside."""
        try:
            record = to_record(row)
            # A producer span per row, continuing the row's trace; the record carries the
            # span's traceparent. It ends when Kafka acknowledges.
            with publishing(record.topic, record.headers, record.event_id) as publish:
                delivery: asyncio.Future[Any] = await producer.send(
                    record.topic, record.value, key=record.key, headers=publish.headers
                )
                publish.until(delivery)
        except _ROW_ERRORS as exc:
            _set_aside(failed, row, exc)
            return None
        return delivery

    async def _ready_producer(self) -> AIOKafkaProducer:
        # Started when the relay first leads, not at service start: a broker that is down then
        # must neither block nor crash the worker, and standbys hold no idle producer.
        if self._producer is None:
            s = self.settings
            self._producer = AIOKafkaProducer(
                bootstrap_servers=s.kafka_bootstrap_servers,
                client_id=f"{s.app_name}-relay",
                enable_idempotence=True,
                acks="all",
                linger_ms=self.linger_ms,
                request_timeout_ms=int(s.kafka_timeout_s * 1000),
            )
            try:
                await asyncio.wait_for(self._producer.start(), 2 * s.kafka_timeout_s)
            except BaseException:
                await self._drop_producer(flush_s=0)
                raise
        return self._producer

    async def _drop_producer(self, flush_s: float) -> None:
        """Stop the producer, waiting `flush_s` at most for what it still holds."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        stopping = asyncio.ensure_future(producer.stop())
        done, _ = await asyncio.wait({stopping}, timeout=flush_s)
        if not done:
            _fail_pending_batches(producer)
            done, _ = await asyncio.wait({stopping}, timeout=self.settings.kafka_timeout_s)
        if not done:
            stopping.cancel()
            log.warning("relay producer did not stop in time")
        elif (exc := stopping.exception()) is not None:
            log.warning("relay producer stop failed", error=_describe(exc))

    # -- gauges and the reaper ----------------------------------------------------------------

    async def _reap(self, conn: asyncpg.Connection) -> None:
        # Housekeeping: a failed query is logged and retried next time, unless the connection
        # itself is gone (then leadership goes too).
        try:
            outbox = await self._delete_in_chunks(
                conn, REAP_PUBLISHED, float(self.published_retention_s)
            )
            keys = await self._delete_in_chunks(conn, REAP_EXPIRED_KEYS)
        except (asyncpg.PostgresError, TimeoutError) as exc:
            if conn.is_closed():
                raise
            log.warning("relay reaper failed", error=_describe(exc))
            return
        REAPED.labels("outbox").inc(outbox)
        REAPED.labels("idempotency_keys").inc(keys)
        if outbox or keys:
            log.info("relay reaped", outbox_rows=outbox, idempotency_keys=keys)

    async def _delete_in_chunks(self, conn: asyncpg.Connection, sql: str, *args: Any) -> int:
        total = 0
        for _ in range(self.reap_max_chunks):
            status = await conn.execute(
                sql, self.reap_chunk, *args, timeout=self.settings.postgres_timeout_s
            )
            deleted = deleted_count(status)
            total += deleted
            if deleted < self.reap_chunk:
                break
        return total


def _fail_pending_batches(producer: AIOKafkaProducer) -> None:
    """Settle every batch the producer holds as failed, so that its stop() can finish.

    stop() waits until every batch is settled, and an idempotent batch is retried until Kafka
    answers. This reaches into aiokafka 0.14 (pinned <0.15): what its own sender does when it
    dies (`fail_all`), plus retrieving the drain waiters' errors, which it leaves unretrieved.
    """
    accumulator = producer._message_accumulator
    batches = [b for queue in accumulator._batches.values() for b in queue]
    batches += list(accumulator._pending_batches)
    accumulator.fail_all(KafkaError("relay producer dropped"))
    for batch in batches:
        _retrieve(batch._drain_waiter)


def _row_log_fields(row: Row) -> dict[str, str]:
    headers = row["headers"] if isinstance(row["headers"], Mapping) else {}
    cid, traceparent = headers.get(CORRELATION_ID), headers.get(TRACEPARENT)
    return log_fields(
        cid if isinstance(cid, str) else None,
        traceparent if isinstance(traceparent, str) else None,
    )


async def _settle(
    sent: list[tuple[Row, asyncio.Future[Any]]],
    deadline: float,
    error: BaseException | None,
    timeout_s: float,
) -> tuple[list[Row], list[tuple[Row, BaseException]], BaseException | None]:
    """Wait for `sent` until `deadline`: the rows delivered, the rows refused as records
    (their batch was refused), and the first Kafka failure (`error` if one came before)."""
    if sent:
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        await asyncio.wait([d for _, d in sent], timeout=remaining)
    delivered: list[Row] = []
    refused: list[tuple[Row, BaseException]] = []
    for row, delivery in sent:
        if not delivery.done():
            delivery.add_done_callback(_retrieve)  # settled later, or failed on drop
            error = error or TimeoutError(f"no ack within {timeout_s}s")
        elif delivery.cancelled():
            error = error or KafkaError("delivery cancelled")
        elif isinstance(failure := delivery.exception(), _RECORD_REFUSED):
            refused.append((row, failure))
        elif failure is not None:
            error = error or failure
        else:
            delivered.append(row)
    return delivered, refused, error


def _set_aside(failed: list[tuple[UUID, str]], row: Row, exc: BaseException) -> None:
    failed.append((row["id"], _describe(exc)[:1000]))
    with structlog.contextvars.bound_contextvars(**_row_log_fields(row)):
        log.error(
            "outbox row cannot be published: set aside",
            event_id=str(row["id"]),
            error=_describe(exc),
        )


def _retrieve(delivery: asyncio.Future[Any]) -> None:
    """Mark the outcome of a delivery nobody waits for any more as seen (no asyncio warning)."""
    if not delivery.cancelled():
        delivery.exception()


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(
        exc,
        ConnectionLost
        | OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncpg.AdminShutdownError,
    )
