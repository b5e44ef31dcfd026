"""A ledger workload with its reference model, and the Kafka plumbing to drive a cluster.

The workload is built so that its expected result does not depend on how the cluster
interleaves partitions and topics: payments of one account keep their order (one partition);
transfers are only produced once the payments are applied, every transfer meant to succeed fits
in its source's balance before any incoming credit, and those meant to fail cannot succeed in any
order.
"""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams import topics as names
from streams.operations import LedgerTopics, consumer_lag, read_topic
from streams.wire import encode_command
from tables.messages import OpenAccount, RequestTransfer

MAX_AMOUNT = 100_000_000_000


@dataclass(frozen=True)
class Namespace:
    """One test's topics and consumer group on the shared broker."""

    bootstrap: str
    prefix: str
    app_name: str
    partitions: int

    def topic(self, name: str) -> str:
        return self.prefix + name

    @property
    def ledger_topics(self) -> LedgerTopics:
        return LedgerTopics(
            bootstrap=self.bootstrap,
            group=self.app_name,
            inputs=[
                self.topic(n)
                for n in (names.PAYMENTS, names.COMMANDS, names.LEGS, names.TRANSFER_EVENTS)
            ],
            outcomes=self.topic(names.OUTCOMES),
            transfer_events=self.topic(names.TRANSFER_EVENTS),
            accounts_changelog=f"{self.app_name}-accounts-changelog",
        )

    def worker_env(self) -> dict[str, str]:
        return {
            "ATLAS_TOPIC_PREFIX": self.prefix,
            "ATLAS_APP_NAME": self.app_name,
            "ATLAS_TOPIC_PARTITIONS": str(self.partitions),
        }

    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            wanted = [
                names.PAYMENTS,
                names.COMMANDS,
                names.LEGS,
                names.TRANSFER_EVENTS,
                names.OUTCOMES,
                names.DLQ,
            ]
            await admin.create_topics([NewTopic(self.topic(n), self.partitions, 1) for n in wanted])
        finally:
            await admin.close()

    async def lag(self) -> int:
        t = self.ledger_topics
        return sum((await consumer_lag(t.bootstrap, t.group, t.inputs)).values())

    async def wait_at_rest(
        self, timeout_s: float, still_alive: Callable[[], None] | None = None
    ) -> None:
        """Until the group has committed everything on its input topics (legs included)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        quiet = 0
        while True:
            if still_alive:
                still_alive()
            lag = await self.lag()
            quiet = quiet + 1 if lag == 0 else 0
            if quiet >= 3:  # three readings in a row: no leg or event still on its way
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"lag still {lag} after {timeout_s}s")
            await asyncio.sleep(1.0)


def payment(
    event_id: str, kind: str, account: str, amount: Any, currency: str = "EUR"
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": kind,
        "account_id": account,
        "amount": amount,
        "currency": currency,
        "occurred_at": "2026-11-26T10:00:00Z",
    }


@dataclass
class Message:
    topic: str  # a name from streams.topics
    key: bytes | None
    value: bytes
    partition: int | None = None


@dataclass
class Garbage:
    message: Message
    error_type: str


@dataclass
class Workload:
    """Messages by phase, and what the ledger must show afterwards."""

    accounts: dict[str, str] = field(default_factory=dict)  # id -> currency
    opens: list[Message] = field(default_factory=list)
    payments: list[Message] = field(default_factory=list)
    garbage: list[Garbage] = field(default_factory=list)
    transfers: list[Message] = field(default_factory=list)
    balance_after_payments: dict[str, int] = field(default_factory=dict)
    expected_balance: dict[str, int] = field(default_factory=dict)
    expected_transfer: dict[str, str] = field(default_factory=dict)  # id -> final status
    expected_outcomes: dict[str, str] = field(default_factory=dict)  # event id -> applied/rejected
    duplicates: int = 0


def build(
    seed: int,
    *,
    accounts: int = 220,
    payments: int = 10_000,
    duplicate_share: float = 0.2,
    transfers: int = 2_000,
    garbage: bool = True,
    withdrawals: bool = True,
) -> Workload:
    rng = random.Random(seed)
    w = Workload()
    ids = [f"acc-{i:04d}" for i in range(accounts)]
    for i, acc in enumerate(ids):
        w.accounts[acc] = "USD" if i % 10 == 9 else "EUR"
        open_cmd = OpenAccount(
            str(uuid.UUID(int=rng.getrandbits(128))), acc, f"{acc}@example.com", w.accounts[acc]
        )
        w.opens.append(Message(names.COMMANDS, acc.encode(), encode_command(open_cmd)))

    # Payments. One hot account takes ~30% of them, so resends of its early events arrive
    # after thousands of later events on it (long past the marks kept in its record).
    hot = ids[0]
    balance: dict[str, int] = defaultdict(int)
    originals: list[Message] = []
    for n in range(payments):
        if originals and rng.random() < duplicate_share:
            early = [m for m in originals[:300] if m.key == hot.encode()]
            pool = early if early and rng.random() < 0.3 else originals
            w.payments.append(rng.choice(pool))
            w.duplicates += 1
            continue
        acc = hot if rng.random() < 0.3 else rng.choice(ids)
        kind = "withdrawal" if withdrawals and rng.random() < 0.3 else "deposit"
        amount = rng.randint(1, 10_000)
        event_id = f"ev-{seed}-{n}"
        if kind == "deposit":
            balance[acc] += amount
            w.expected_outcomes[event_id] = "applied"
        elif balance[acc] >= amount:
            balance[acc] -= amount
            w.expected_outcomes[event_id] = "applied"
        else:
            w.expected_outcomes[event_id] = "rejected"
        body = orjson.dumps(payment(event_id, kind, acc, amount, w.accounts[acc]))
        originals.append(Message(names.PAYMENTS, acc.encode(), body))
        w.payments.append(originals[-1])
    w.balance_after_payments = dict(balance)

    if garbage:
        w.garbage = _garbage(ids[0])

    # Transfers, decided against the balances after payments only.
    budget = dict(balance)
    final = dict(balance)
    for n in range(transfers):
        tid = f"tr-{seed}-{n}"
        src = rng.choice(ids)
        dst = rng.choice([a for a in rng.sample(ids, 3) if a != src] or [ids[-1]])
        currency = w.accounts[src]
        roll = rng.random()
        amount = rng.randint(1, 500)
        expected = "completed"
        if roll < 0.05:
            src = f"nobody-{n}"
            expected = "rejected"
        elif roll < 0.12:
            amount = MAX_AMOUNT  # more than all the money there is
            expected = "rejected"
        elif roll < 0.17:
            currency = "USD" if currency == "EUR" else "EUR"
            expected = "rejected"
        elif roll < 0.24:
            dst = f"nobody-{n}"
            expected = "reversed"
        elif roll < 0.30:
            dst = next(a for a in ids if w.accounts[a] != currency)
            expected = "reversed"
        elif w.accounts.get(dst) != currency:
            dst = next(a for a in ids if w.accounts[a] == currency and a != src)
        if expected in ("completed", "reversed"):
            if budget.get(src, 0) < amount:
                amount = MAX_AMOUNT
                expected = "rejected"
            else:
                budget[src] -= amount
        if expected == "completed":
            final[src] -= amount
            final[dst] = final.get(dst, 0) + amount
        cmd = RequestTransfer(tid, src, dst, amount, currency)
        w.transfers.append(Message(names.COMMANDS, src.encode(), encode_command(cmd)))
        w.expected_transfer[tid] = expected
    w.expected_balance = {a: final.get(a, 0) for a in ids}
    return w


def _garbage(acc: str) -> list[Garbage]:
    good = payment("garbage-ok", "deposit", acc, 5)
    bad = [
        (acc.encode(), b"{not json", "decode_error"),
        (acc.encode(), b"\xff\xfe\x00", "decode_error"),
        (acc.encode(), b"[1, 2, 3]", "schema_error"),
        (acc.encode(), orjson.dumps({**good, "event_id": "g-neg", "amount": -5}), "schema_error"),
        (
            acc.encode(),
            orjson.dumps({**good, "event_id": "g-float", "amount": 12.5}),
            "schema_error",
        ),
        (
            acc.encode(),
            orjson.dumps({**good, "event_id": "g-str", "amount": "100"}),
            "schema_error",
        ),
        (
            acc.encode(),
            orjson.dumps({**good, "event_id": "g-type", "type": "refund"}),
            "schema_error",
        ),
        (
            acc.encode(),
            orjson.dumps({**good, "event_id": "g-cur", "currency": "euro"}),
            "schema_error",
        ),
        (None, orjson.dumps({**good, "event_id": "g-nokey"}), "key_missing"),
        (b"someone-else", orjson.dumps({**good, "event_id": "g-otherkey"}), "key_mismatch"),
    ]
    return [Garbage(Message(names.PAYMENTS, k, v), t) for k, v, t in bad]


def crc32_partition(key: bytes, partitions: int) -> int:
    """librdkafka's `consistent` partitioner (kcat's default family): CRC32 of the key."""
    return zlib.crc32(key) % partitions


async def produce(
    ns: Namespace, messages: list[Message], *, pace_s: float = 0.0, chunk: int = 500
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=ns.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(messages), chunk):
            futures = [
                await producer.send(ns.topic(m.topic), m.value, key=m.key, partition=m.partition)
                for m in messages[start : start + chunk]
            ]
            await asyncio.gather(*futures)
            if pace_s:
                await asyncio.sleep(pace_s)
    finally:
        await producer.stop()


async def final_balances(ns: Namespace) -> dict[str, int]:
    accounts: dict[str, int] = {}
    for r in await read_topic(ns.bootstrap, ns.ledger_topics.accounts_changelog):
        if r.value is not None:
            accounts[r.key.decode()] = orjson.loads(r.value)["balance"]
    return accounts


async def transfer_finals(ns: Namespace) -> dict[str, set[str]]:
    finals: dict[str, set[str]] = defaultdict(set)
    for r in await read_topic(ns.bootstrap, ns.topic(names.TRANSFER_EVENTS)):
        event = orjson.loads(r.value)
        if event["status"] in ("completed", "rejected", "reversed"):
            finals[event["transfer_id"]].add(event["status"])
    return finals


async def decided_outcomes(ns: Namespace) -> dict[str, set[str]]:
    decided: dict[str, set[str]] = defaultdict(set)
    for r in await read_topic(ns.bootstrap, ns.topic(names.OUTCOMES)):
        outcome = orjson.loads(r.value)
        decided[outcome["event_id"]].add(outcome["status"])
    return decided


async def dead_letters(ns: Namespace) -> list[dict[str, Any]]:
    letters = []
    for r in await read_topic(ns.bootstrap, ns.topic(names.DLQ)):
        headers = {k: bytes(v).decode(errors="replace") for k, v in r.headers or ()}
        letters.append({"key": r.key, "value": r.value, **headers})
    return letters
