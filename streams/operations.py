"""Operator tools that read Kafka directly: the audit (`atlas verify`) and dead-letter replay.

They read topics to their end offsets with plain aiokafka clients (no consumer group, unless
noted), so they see what the cluster wrote, not what one worker holds in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tables.audit import AuditReport, audit


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """Every record of `topic` up to its end offsets when the call starts."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: {len(remaining)} partitions not at their end")
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, batch in batches.items():
                records.extend(r for r in batch if r.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def consumer_lag(bootstrap: str, group: str, topics: list[str]) -> dict[TopicPartition, int]:
    """Messages not yet committed by `group`, per partition of `topics`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        await consumer._client.force_metadata_update()
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = await consumer.end_offsets(tps) if tps else {}
        lag = {}
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag[tp] = max(ends[tp] - done, 0)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


@dataclass(frozen=True)
class LedgerTopics:
    bootstrap: str
    group: str
    inputs: list[str]
    outcomes: str
    transfer_events: str
    accounts_changelog: str


def _json(value: bytes | None) -> Any:
    return orjson.loads(value) if value is not None else None


async def verify(t: LedgerTopics, wait_s: float = 0.0) -> tuple[AuditReport, int]:
    """Audit the ledger once the group's lag is 0 (waiting up to `wait_s`); return the lag too."""
    deadline = time.monotonic() + wait_s
    while True:
        lag = sum((await consumer_lag(t.bootstrap, t.group, t.inputs)).values())
        if lag == 0 or time.monotonic() >= deadline:
            break
        await asyncio.sleep(1.0)
    changelog = await read_topic(t.bootstrap, t.accounts_changelog)
    accounts: dict[str, Mapping[str, Any]] = {}
    for record in changelog:  # compacted: the last record of a key is its state
        key = record.key.decode()
        value = _json(record.value)
        if value is None:
            accounts.pop(key, None)
        else:
            accounts[key] = value
    outcomes = [_json(r.value) for r in await read_topic(t.bootstrap, t.outcomes)]
    transfers = [_json(r.value) for r in await read_topic(t.bootstrap, t.transfer_events)]
    report = audit(accounts, outcomes, transfers)
    if lag:
        report.violations.append(f"consumer lag is {lag}, not 0: the ledger is not at rest")
    return report, lag


def _header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode(errors="replace")
    return None


async def replay_dead_letters(
    bootstrap: str, dlq: str, group: str, error_type: str | None = None
) -> dict[str, int]:
    """Re-inject dead letters into their source topics, once each (offsets committed by `group`).

    Returns counts by error type of what was replayed.
    """
    consumer = AIOKafkaConsumer(
        dlq,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    replayed: dict[str, int] = {}
    try:
        await consumer.getmany(timeout_ms=1000)  # join the group and get an assignment
        tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps) if tps else {}
        for tp in tps:
            committed = await consumer.committed(tp)
            consumer.seek(tp, committed if committed is not None else 0)

        async def behind() -> bool:
            for tp in tps:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
            sends = []
            for tp, batch in batches.items():
                for record in batch:
                    if record.offset >= ends[tp]:
                        continue
                    kind = _header(record, "error.type") or "unknown"
                    source = _header(record, "source.topic")
                    if source is None or (error_type is not None and kind != error_type):
                        continue
                    origin = f"{record.partition}:{record.offset}".encode()
                    sends.append(
                        await producer.send(
                            source,
                            record.value,
                            key=record.key,
                            headers=[("atlas.replayed-from-dlq", origin)],
                        )
                    )
                    replayed[kind] = replayed.get(kind, 0) + 1
            await asyncio.gather(*sends)
            await consumer.commit()
        return replayed
    finally:
        await producer.stop()
        await consumer.stop()
