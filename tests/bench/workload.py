"""The benchmark's input: account-opening commands and payment events, built and produced once.

Payment events follow the `atlas.payments.v1` contract (DESIGN.md): deposits only, integer
amounts in minor units, currency EUR, keyed by account id. A fraction of the events is sent a
second time, byte for byte, after at least `events // 20` later events: the expected balance of
an account counts each event id once.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import RecordMetadata

from streams.wire import encode_command
from tables.messages import OpenAccount

CURRENCY = "EUR"
MAX_AMOUNT = 100_000  # minor units per event
_EPOCH = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

Record = tuple[bytes, bytes]  # (key, value)


@dataclass
class Workload:
    accounts: list[str]
    commands: list[Record]
    payments: list[Record]  # in send order, duplicates included
    unique: int
    duplicate_ids: set[str]
    expected: dict[str, int]  # account id -> sum of its unique deposits
    min_gap: int  # fewest later events between an event and its re-send

    @property
    def total(self) -> int:
        return len(self.payments)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_ids)


def account_ids(count: int) -> list[str]:
    return [f"acc-{i:05d}" for i in range(count)]


def build(events: int, accounts: int, duplicate_fraction: float, seed: int = 7) -> Workload:
    """`events` unique deposits over `accounts` accounts, plus the re-sent duplicates."""
    if events < 100 or accounts < 1:
        raise ValueError("need at least 100 events and one account")
    rng = random.Random(seed)
    ids = account_ids(accounts)
    commands = [
        (
            acc.encode(),
            encode_command(OpenAccount(f"open-{acc}", acc, f"{acc}@bench.example", CURRENCY)),
        )
        for acc in ids
    ]

    uniques: list[Record] = []
    event_ids: list[str] = []
    expected = dict.fromkeys(ids, 0)
    for i in range(events):
        acc = ids[rng.randrange(accounts)]
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        amount = rng.randint(1, MAX_AMOUNT)
        occurred = (_EPOCH + timedelta(milliseconds=i)).isoformat(timespec="milliseconds")
        occurred = occurred.replace("+00:00", "Z")
        body = {
            "event_id": event_id,
            "type": "deposit",
            "account_id": acc,
            "amount": amount,
            "currency": CURRENCY,
            "occurred_at": occurred,
        }
        uniques.append((acc.encode(), orjson.dumps(body)))
        event_ids.append(event_id)
        expected[acc] += amount

    # Each picked event is re-sent at a position `min_gap` to `min_gap + events / 2` unique
    # events after its first send (those falling past the end go last, in the same order).
    min_gap = max(1, events // 20)
    picks = rng.sample(range(events - min_gap), round(events * duplicate_fraction))
    due = sorted((i + min_gap + rng.randrange(events // 2 + 1), i) for i in picks)
    payments: list[Record] = []
    d = 0
    for j, record in enumerate(uniques):
        while d < len(due) and due[d][0] <= j:
            payments.append(uniques[due[d][1]])
            d += 1
        payments.append(record)
    payments.extend(uniques[i] for _, i in due[d:])
    return Workload(
        accounts=ids,
        commands=commands,
        payments=payments,
        unique=events,
        duplicate_ids={event_ids[i] for i in picks},
        expected=expected,
        min_gap=min_gap,
    )


# ---- Kafka -------------------------------------------------------------------------------------


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names]
        )
        for _ in range(100):  # bounded: until every topic has its partitions in metadata
            described = await admin.describe_topics(names)
            if all(
                len(t.get("partitions", [])) == partitions
                and all(p.get("leader", -1) >= 0 for p in t["partitions"])
                for t in described
            ):
                # Metadata can show a leader before it takes produce requests; a short pause
                # saves a round of NotLeaderForPartition retries on the first sends.
                await asyncio.sleep(1.0)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topics {names} not visible with {partitions} partitions")
    finally:
        await admin.close()


@dataclass
class ProduceStats:
    topic: str
    records: int
    seconds: float
    per_partition: Counter[int] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


async def produce(
    bootstrap: str, topic: str, records: list[Record], *, timeout_s: float
) -> ProduceStats:
    """Send every record with the default (murmur2) partitioner; await the deliveries at the end."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:

        async def send_all() -> list[asyncio.Future[RecordMetadata]]:
            futures = []
            for key, value in records:
                futures.append(await producer.send(topic, value=value, key=key))
            await producer.flush()
            return futures

        futures = await asyncio.wait_for(send_all(), timeout=timeout_s)
        stats = ProduceStats(topic, len(records), time.perf_counter() - started)
        for fut in futures:
            stats.per_partition[fut.result().partition] += 1  # raises if a delivery failed
        return stats
    finally:
        await producer.stop()
