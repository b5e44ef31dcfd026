"""A worker catching up processes each account's inputs in time order, across topics.

The ledger agent reads the payments, commands and legs topics as one stream, co-partitioned by
account (murmur2 of the account id). Here every OpenAccount command is on the commands topic
before any deposit is on the payments topic (their timestamps say so, and the test checks it),
and only then does a worker start, with all of it to catch up on. Taken in time order, every
account is open before its first deposit: none is rejected as "unknown account", every deposit
is applied, and each balance is the sum of its deposits. Taken topic by topic as they happen to
be fetched, some deposits are decided before their account's command, and rejected.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from streams import topics as names
from streams.kafka import partition_for
from streams.operations import read_topic
from streams.wire import encode_command
from tables.messages import OpenAccount
from tests.integration.processes import WorkerProcess
from tests.integration.stack import Stack, tag
from tests.integration.workload import Message, Namespace, payment, produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(75)]

Spawn = Callable[..., WorkerProcess]
ACCOUNTS = 300
DEPOSITS = 6_000
OUTCOMES_WITHIN_S = 25.0


@pytest.fixture
async def ns(stack: Stack, base_env: dict[str, str]) -> AsyncIterator[Namespace]:
    """Brand-new topics and group, with the partition count the workers are configured with."""
    t = tag()
    partitions = int(base_env["ATLAS_TOPIC_PARTITIONS"])
    namespace = Namespace(stack.kafka_bootstrap, f"t{t}.", f"atlas-t{t}", partitions)
    await namespace.create_topics()
    yield namespace


def placed(m: Message, partitions: int) -> Message:
    """On its key's murmur2 partition, where the worker reads it (the co-partitioning)."""
    assert m.key is not None
    m.partition = partition_for(m.key, partitions)
    return m


def opens(accounts: list[str], partitions: int) -> list[Message]:
    return [
        placed(
            Message(
                names.COMMANDS,
                acc.encode(),
                encode_command(OpenAccount(uuid.uuid4().hex, acc, f"{acc}@example.com", "EUR")),
            ),
            partitions,
        )
        for acc in accounts
    ]


def deposits(
    accounts: list[str], count: int, partitions: int, rng: random.Random
) -> tuple[list[Message], dict[str, int]]:
    """`count` deposits spread over the accounts, and the balance each account must end with."""
    messages: list[Message] = []
    expected = dict.fromkeys(accounts, 0)
    for n in range(count):
        acc = rng.choice(accounts)
        amount = rng.randint(1, 10_000)
        expected[acc] += amount
        body = orjson.dumps(payment(f"dep-{n}", "deposit", acc, amount))
        messages.append(placed(Message(names.PAYMENTS, acc.encode(), body), partitions))
    return messages, expected


async def timestamps(ns: Namespace, topic: str) -> list[int]:
    return [r.timestamp for r in await read_topic(ns.bootstrap, ns.topic(topic))]


async def outcomes(ns: Namespace) -> dict[str, list[dict[str, Any]]]:
    """Every outcome on the outcomes topic, by event id."""
    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in await read_topic(ns.bootstrap, ns.topic(names.OUTCOMES)):
        outcome = orjson.loads(r.value)
        by_event[outcome["event_id"]].append(outcome)
    return by_event


async def wait_for_outcomes(
    ns: Namespace, event_ids: set[str], worker: WorkerProcess, timeout_s: float
) -> dict[str, list[dict[str, Any]]]:
    """Until every event has an outcome (bounded); fails with how many are still undecided."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        assert worker.proc is not None and worker.proc.poll() is None, (
            f"worker died:\n{worker.log_tail()}"
        )
        decided = await outcomes(ns)
        missing = event_ids - set(decided)
        if not missing:
            return decided
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"{len(missing)} of {len(event_ids)} payments without an outcome after"
                f" {timeout_s}s, e.g. {sorted(missing)[:5]}\n{worker.log_tail()}"
            )
        await asyncio.sleep(1.0)


def balances(worker: WorkerProcess, accounts: list[str]) -> dict[str, int | None]:
    """Each account's balance as `GET /v1/accounts/{id}` answers it (None: not a 200)."""
    found: dict[str, int | None] = {}
    for acc in accounts:
        r = worker.get(f"/v1/accounts/{acc}")
        found[acc] = r.json()["balance"] if r.status == 200 else None
    return found


async def test_a_catching_up_worker_opens_accounts_before_their_earlier_deposits(
    ns: Namespace, spawn_worker: Spawn
) -> None:
    rng = random.Random(17)
    accounts = [f"ord-{i:04d}" for i in range(ACCOUNTS)]
    commands = opens(accounts, ns.partitions)
    payments, expected = deposits(accounts, DEPOSITS, ns.partitions, rng)

    # Everything is on the topics before any worker reads them: commands first, then payments.
    await produce(ns, commands)
    await asyncio.sleep(0.05)  # a later millisecond: every payment is strictly younger
    await produce(ns, payments)
    command_ts = await timestamps(ns, names.COMMANDS)
    payment_ts = await timestamps(ns, names.PAYMENTS)
    assert (len(command_ts), len(payment_ts)) == (ACCOUNTS, DEPOSITS)
    assert max(command_ts) < min(payment_ts), "the premise: every command is older"

    worker = spawn_worker(**ns.worker_env())
    await asyncio.to_thread(worker.wait_ready, 30)
    event_ids = {orjson.loads(m.value)["event_id"] for m in payments}
    decided = await wait_for_outcomes(ns, event_ids, worker, OUTCOMES_WITHIN_S)

    wrong = [
        o
        for o in (o for got in decided.values() for o in got)
        if o["status"] == "rejected" and o["reason"] == "unknown account"
    ]
    accounts_hit = {o["account_id"] for o in wrong}
    by_partition = Counter(partition_for(o["account_id"].encode(), ns.partitions) for o in wrong)
    assert not wrong, (
        f"{len(wrong)} of {DEPOSITS} deposits rejected as 'unknown account' (on"
        f" {len(accounts_hit)} of {ACCOUNTS} accounts; by partition {dict(by_partition)})"
        f" although every OpenAccount was written earlier; e.g. {wrong[:3]}"
    )
    statuses = Counter(o["status"] for got in decided.values() for o in got)
    assert statuses == {"applied": DEPOSITS}, f"not every deposit applied once: {statuses}"

    got = await asyncio.to_thread(balances, worker, accounts)
    off = {acc: (got[acc], want) for acc, want in expected.items() if got[acc] != want}
    assert not off, (
        f"{len(off)} balances are not the sum of their deposits (got, expected):"
        f" {list(off.items())[:5]}"
    )
