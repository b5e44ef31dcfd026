"""The ledger on the real stack: a workload against its reference model, with and without crashes.

The crash tests are the bar: workers are killed with SIGKILL mid-stream and restarted (or their
partitions move to a surviving worker), and afterwards every balance equals the reference model
exactly, every transfer has exactly one final status, the lag returns to 0 and `atlas verify`
passes. A committed offset that ran ahead of a lost changelog write, or a replay applied twice,
changes a balance and fails them.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from streams.kafka import partition_for
from tests.integration.processes import WorkerProcess, run_atlas
from tests.integration.stack import Stack, tag
from tests.integration.workload import (
    Namespace,
    Workload,
    build,
    crc32_partition,
    dead_letters,
    decided_outcomes,
    final_balances,
    produce,
    transfer_finals,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
Spawn = Callable[..., WorkerProcess]


@pytest.fixture
async def ns(stack: Stack) -> AsyncIterator[Namespace]:
    t = tag()
    namespace = Namespace(stack.kafka_bootstrap, f"t{t}.", f"atlas-t{t}", PARTITIONS)
    await namespace.create_topics()
    yield namespace


def atlas(ns: Namespace, base_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_atlas({**base_env, **ns.worker_env()}, *args)


def alive(*workers: WorkerProcess) -> Callable[[], None]:
    def check() -> None:
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, f"worker died:\n{w.log_tail()}"

    return check


async def assert_ledger_matches(ns: Namespace, w: Workload, base_env: dict[str, str]) -> None:
    balances = await final_balances(ns)
    wrong = {
        a: (balances.get(a), b) for a, b in w.expected_balance.items() if balances.get(a, 0) != b
    }
    assert not wrong, (
        f"{len(wrong)} balances off the reference (got, expected): {list(wrong.items())[:5]}"
    )

    finals = await transfer_finals(ns)
    assert set(finals) == set(w.expected_transfer), "some transfers have no final status"
    conflicting = {t: s for t, s in finals.items() if len(s) != 1}
    assert not conflicting, (
        f"transfers with several final statuses: {list(conflicting.items())[:5]}"
    )
    mismatched = {
        t: (s, w.expected_transfer[t]) for t, s in finals.items() if s != {w.expected_transfer[t]}
    }
    assert not mismatched, (
        f"transfers ended otherwise than expected: {list(mismatched.items())[:5]}"
    )

    decided = await decided_outcomes(ns)
    for event_id, expected in w.expected_outcomes.items():
        assert decided[event_id] - {"duplicate"} == {expected}, (
            event_id,
            decided[event_id],
            expected,
        )

    verify = atlas(ns, base_env, "verify", "--wait", "30")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verify: OK" in verify.stdout


async def run_phases(
    ns: Namespace, w: Workload, still_alive: Callable[[], None], pace_s: float = 0.0
) -> None:
    await produce(ns, w.opens)
    await ns.wait_at_rest(120, still_alive)
    await produce(ns, w.payments + [g.message for g in w.garbage], pace_s=pace_s, chunk=250)
    await ns.wait_at_rest(180, still_alive)
    balances = await final_balances(ns)
    for account, expected in w.balance_after_payments.items():
        assert balances.get(account, 0) == expected, (account, balances.get(account), expected)
    await produce(ns, w.transfers, pace_s=pace_s, chunk=100)
    await ns.wait_at_rest(180, still_alive)


async def test_workload_matches_the_reference_model(
    ns: Namespace, spawn_worker: Spawn, base_env: dict[str, str]
) -> None:
    w = build(seed=11)
    worker = spawn_worker(**ns.worker_env())
    await asyncio.to_thread(worker.wait_ready)
    pid = worker.proc.pid if worker.proc else None

    await run_phases(ns, w, alive(worker))
    await assert_ledger_matches(ns, w, base_env)

    # Without crashes, every resend is reported as a duplicate exactly once.
    decided = await decided_outcomes(ns)
    assert sum("duplicate" in s for s in decided.values()) > 0
    outcome_count = Counter(s for statuses in decided.values() for s in statuses)
    assert outcome_count["applied"] + outcome_count["rejected"] == len(w.expected_outcomes)

    # Every garbage message is a dead letter with its reason and where it came from.
    letters = await dead_letters(ns)
    by_value = {(letter["key"], letter["value"]): letter for letter in letters}
    for g in w.garbage:
        letter = by_value[(g.message.key, g.message.value)]
        assert letter["error.type"] == g.error_type, (g.message.value, letter)
        assert letter["source.topic"] == ns.topic(g.message.topic)
        assert letter["error.message"]
        assert int(letter["source.offset"]) >= 0 and int(letter["source.partition"]) >= 0
    assert len(letters) == len(w.garbage)

    # Reads through the HTTP API agree with the changelog.
    for account in random.Random(1).sample(sorted(w.accounts), 10):
        r = worker.get(f"/v1/accounts/{account}")
        assert r.status == 200 and r.json()["balance"] == w.expected_balance[account]
    some_transfer = next(iter(w.expected_transfer))
    r = worker.get(f"/v1/transfers/{some_transfer}?wait=5")
    assert r.json()["status"] == w.expected_transfer[some_transfer]
    missing = worker.get("/v1/accounts/nobody-at-all")
    assert missing.status == 404 and missing.headers["Content-Type"].startswith(
        "application/problem+json"
    )

    # The worker never restarted.
    assert worker.proc is not None and worker.proc.poll() is None and worker.proc.pid == pid
    assert not [r for r in worker.log_records() if "Crashed" in str(r.get("event"))]

    # Dead letters can be re-injected; still undecodable, they come back with their reason.
    replay = atlas(ns, base_env, "dlq", "replay", "--error-type", "decode_error")
    assert replay.returncode == 0, replay.stderr
    assert "replayed 2 dead letters" in replay.stdout
    await ns.wait_at_rest(60, alive(worker))
    again = [x for x in await dead_letters(ns) if x["error.type"] == "decode_error"]
    assert len(again) == 4


async def chaos(
    spawn_worker: Spawn,
    first: WorkerProcess,
    kills: list[float],
    stop: asyncio.Event,
    rng: random.Random,
    min_kills: int,
) -> WorkerProcess:
    """SIGKILL the worker at random moments and start it again, until told to stop.

    Stopping waits until `kills` holds at least `min_kills` kills.
    """
    worker = first
    loop = asyncio.get_running_loop()
    while not (stop.is_set() and len(kills) >= min_kills):
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        worker.kill()
        kills.append(loop.time())
        worker = spawn_worker(
            port=worker.port,
            ATLAS_DATA_DIR=worker.env["ATLAS_DATA_DIR"],
            **{
                k: v
                for k, v in worker.env.items()
                if k.startswith("ATLAS_") and k != "ATLAS_DATA_DIR" and k != "ATLAS_WEB_PORT"
            },
        )
        await asyncio.to_thread(worker.wait_ready, 120)
    return worker


async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    ns: Namespace, spawn_worker: Spawn, base_env: dict[str, str]
) -> None:
    w = build(seed=23)
    first = spawn_worker(**ns.worker_env())
    await asyncio.to_thread(first.wait_ready)
    await produce(ns, w.opens)
    await ns.wait_at_rest(120)

    kills: list[float] = []
    stop = asyncio.Event()
    killer = asyncio.create_task(chaos(spawn_worker, first, kills, stop, random.Random(5), 3))
    await produce(ns, w.payments + [g.message for g in w.garbage], pace_s=0.3, chunk=250)
    stop.set()
    worker = await killer
    await ns.wait_at_rest(180, alive(worker))
    balances = await final_balances(ns)
    for account, expected in w.balance_after_payments.items():
        assert balances.get(account, 0) == expected, (account, balances.get(account), expected)

    stop = asyncio.Event()
    killer = asyncio.create_task(chaos(spawn_worker, worker, kills, stop, random.Random(6), 5))
    await produce(ns, w.transfers, pace_s=0.3, chunk=100)
    stop.set()
    worker = await killer
    await ns.wait_at_rest(180, alive(worker))

    assert len(kills) >= 5
    await assert_ledger_matches(ns, w, base_env)


async def test_two_workers_one_killed_its_partitions_move_to_the_other(
    ns: Namespace, spawn_worker: Spawn, base_env: dict[str, str]
) -> None:
    w = build(seed=37, payments=6_000, transfers=1_200)
    a = spawn_worker(**ns.worker_env())
    b = spawn_worker(**ns.worker_env())
    await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
    await produce(ns, w.opens)
    await ns.wait_at_rest(120, alive(a, b))

    async def kill_a_midway() -> None:
        await asyncio.sleep(2.0)
        a.kill()

    await asyncio.gather(
        produce(ns, w.payments + [g.message for g in w.garbage], pace_s=0.3, chunk=250),
        kill_a_midway(),
    )
    await ns.wait_at_rest(180, alive(b))
    await produce(ns, w.transfers)
    await ns.wait_at_rest(180, alive(b))
    await assert_ledger_matches(ns, w, base_env)
    # The survivor owns every partition now and serves every account.
    for account in random.Random(2).sample(sorted(w.accounts), 10):
        assert b.get(f"/v1/accounts/{account}").json()["balance"] == w.expected_balance[account]


def metric_total(worker: WorkerProcess, name: str, **labels: str) -> float:
    total = 0.0
    for line in worker.get("/metrics").body.decode().splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_crc32_producers_are_rerouted_never_applied_where_they_land(
    ns: Namespace, spawn_worker: Spawn, base_env: dict[str, str]
) -> None:
    w = build(
        seed=41, payments=3_000, duplicate_share=0.1, transfers=0, garbage=False, withdrawals=False
    )
    for m in w.payments:  # as librdkafka clients (kcat) place them by default
        assert m.key is not None
        m.partition = crc32_partition(m.key, PARTITIONS)
    misplaced = sum(partition_for(m.key or b"", PARTITIONS) != m.partition for m in w.payments)
    assert misplaced > len(w.payments) // 2

    a = spawn_worker(**ns.worker_env())
    b = spawn_worker(**ns.worker_env())
    await asyncio.gather(asyncio.to_thread(a.wait_ready), asyncio.to_thread(b.wait_ready))
    await produce(ns, w.opens)
    await ns.wait_at_rest(120, alive(a, b))
    await produce(ns, w.payments)
    await ns.wait_at_rest(180, alive(a, b))

    balances = await final_balances(ns)
    assert {acc: balances.get(acc, 0) for acc in w.accounts} == {
        acc: w.balance_after_payments.get(acc, 0) for acc in w.accounts
    }
    rerouted = sum(metric_total(x, "atlas_events_total", outcome="rerouted") for x in (a, b))
    assert rerouted == misplaced
    # Each worker answers for every account: reads of keys it does not own are routed.
    for account in random.Random(3).sample(sorted(w.accounts), 20):
        for worker in (a, b):
            r = worker.get(f"/v1/accounts/{account}")
            assert r.status == 200, r.body
            assert r.json()["balance"] == w.balance_after_payments.get(account, 0)
    verify = atlas(ns, base_env, "verify", "--wait", "30")
    assert verify.returncode == 0, verify.stdout + verify.stderr
