"""SIGKILLs at the named points of a ledger batch (`streams.failpoints`), and what survives them.

A worker armed with `ATLAS_FAILPOINT=<point>:<n>` kills itself the n-th time a ledger batch passes
`<point>`, with the batch half done:

- `ledger.state-written`: the batch's records are in the local RocksDB store, nothing of the batch
  reached Kafka (the store runs ahead of the changelog);
- `ledger.changelog-acked`: the changelog holds the batch's records, its outcomes, legs and
  transfer events are in flight and its offsets uncommitted (the changelog runs ahead of the
  effects).

Then the batch is read again: by the same worker with the same data folder, by a surviving
worker that takes its partitions in a rebalance, or by a new worker with an empty data folder
that rebuilds the state from the changelog. Every test then holds the ledger to the reference
model of `workload.build` (`test_ledger.assert_ledger_matches`: every balance exact, every event
decided once and only once, every transfer final once, `atlas verify` clean). A failpoint that
never fires fails the test: the armed worker must end by SIGKILL, by its own hand, mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams import topics as names
from streams.operations import read_topic
from tests.integration.processes import WorkerProcess
from tests.integration.stack import Stack, tag
from tests.integration.test_ledger import alive, assert_ledger_matches
from tests.integration.workload import (
    Namespace,
    Workload,
    build,
    decided_outcomes,
    final_balances,
    produce,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 4
STATE_WRITTEN = "ledger.state-written"
CHANGELOG_ACKED = "ledger.changelog-acked"
Spawn = Callable[..., WorkerProcess]


@pytest.fixture
async def ns(stack: Stack) -> AsyncIterator[Namespace]:
    t = tag()
    namespace = Namespace(stack.kafka_bootstrap, f"k{t}.", f"atlas-k{t}", PARTITIONS)
    await namespace.create_topics()
    yield namespace


def workload(seed: int) -> Workload:
    # Small enough for a minute a test, large enough for a hundred batches or so of payments.
    return build(seed, accounts=80, payments=3_000, transfers=300)


def armed(point: str, n: int) -> dict[str, str]:
    return {"ATLAS_FAILPOINT": f"{point}:{n}"}


def again(spawn_worker: Spawn, worker: WorkerProcess) -> WorkerProcess:
    """The same worker started again: its port and data folder, without its failpoint."""
    env = {
        k: v
        for k, v in worker.env.items()
        if k.startswith("ATLAS_") and k not in ("ATLAS_WEB_PORT", "ATLAS_FAILPOINT")
    }
    return spawn_worker(port=worker.port, **env)


async def open_accounts(ns: Namespace, w: Workload, *workers: WorkerProcess) -> None:
    await asyncio.gather(*(asyncio.to_thread(x.wait_ready) for x in workers))
    await produce(ns, w.opens)
    await ns.wait_at_rest(60, alive(*workers))


async def killed_at_failpoint(
    victim: WorkerProcess, timeout_s: float, *survivors: WorkerProcess
) -> None:
    """Until `victim` is gone, which must be by its own SIGKILL (the test sends it none)."""
    assert victim.proc is not None
    still_alive = alive(*survivors)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while victim.proc.poll() is None:
        still_alive()
        assert loop.time() < deadline, (
            f"{victim.env['ATLAS_FAILPOINT']} never fired within {timeout_s}s:\n"
            + victim.log_tail()
        )
        await asyncio.sleep(0.05)
    assert victim.proc.returncode == -signal.SIGKILL, (
        f"the armed worker exited with {victim.proc.returncode}, not by its SIGKILL:\n"
        + victim.log_tail()
    )


async def pay_through_a_kill(
    ns: Namespace, w: Workload, victim: WorkerProcess, *survivors: WorkerProcess
) -> None:
    """Produce the payments while `victim` dies at its failpoint, mid-stream."""
    producing = asyncio.create_task(
        produce(ns, w.payments + [g.message for g in w.garbage], pace_s=0.1, chunk=100)
    )
    try:
        await killed_at_failpoint(victim, 30, *survivors)
    except BaseException:
        producing.cancel()
        raise
    # What the cluster holds of the payments when the victim died: some, not all of them.
    decided = set(await decided_outcomes(ns)) & set(w.expected_outcomes)
    assert 0 < len(decided) < len(w.expected_outcomes), (
        f"the failpoint fired with {len(decided)} of {len(w.expected_outcomes)} payments "
        "decided: not mid-stream"
    )
    assert await ns.lag() > 0, "nothing left uncommitted by the killed batch"
    await producing


async def settle_and_check(
    ns: Namespace, w: Workload, base_env: dict[str, str], *workers: WorkerProcess
) -> None:
    """The rest of the workload on the surviving workers; then the ledger against the model."""
    await ns.wait_at_rest(60, alive(*workers))
    balances = await final_balances(ns)
    wrong = {
        a: (balances.get(a, 0), b)
        for a, b in w.balance_after_payments.items()
        if balances.get(a, 0) != b
    }
    assert not wrong, f"balances after payments off the model: {list(wrong.items())[:5]}"
    await produce(ns, w.transfers, chunk=100)
    await ns.wait_at_rest(60, alive(*workers))
    await assert_ledger_matches(ns, w, base_env)


async def outcome_records(ns: Namespace) -> Counter[str]:
    """How many applied or rejected outcome records each event id has (duplicates aside)."""
    counts: Counter[str] = Counter()
    for r in await read_topic(ns.bootstrap, ns.topic(names.OUTCOMES)):
        outcome = orjson.loads(r.value)
        if outcome["status"] != "duplicate":
            counts[outcome["event_id"]] += 1
    return counts


def log_records_from(worker: WorkerProcess, since: int = 0) -> list[dict[str, Any]]:
    """A worker's JSON log records from byte offset `since` (a restart appends to the log)."""
    records = []
    for line in worker.log_path.read_bytes()[since:].decode(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def errors_in(worker: WorkerProcess, since: int = 0) -> list[dict[str, Any]]:
    return [
        r
        for r in log_records_from(worker, since)
        if str(r.get("level", "")).lower() in ("error", "critical", "exception")
    ]


def log_size(worker: WorkerProcess) -> int:
    return worker.log_path.stat().st_size if worker.log_path.exists() else 0


async def test_kill_after_the_state_write_before_the_changelog(
    ns: Namespace, spawn_worker: Spawn, base_env: dict[str, str]
) -> None:
    """The local store holds a batch that Kafka never saw; the same worker restarts on it."""
    w = workload(seed=101)
    victim = spawn_worker(**ns.worker_env(), **armed(STATE_WRITTEN, 24))
    await open_accounts(ns, w, victim)
    await pay_through_a_kill(ns, w, victim)

    start = log_size(victim)
    worker = again(spawn_worker, victim)
    assert worker.env["ATLAS_DATA_DIR"] == victim.env["ATLAS_DATA_DIR"]
    assert "ATLAS_FAILPOINT" not in worker.env
    await asyncio.to_thread(worker.wait_ready)
    await settle_and_check(ns, w, base_env, worker)
    assert not errors_in(worker, start), errors_in(worker, start)[:5]


async def test_kill_after_the_changelog_before_the_outcomes(
    ns: Namespace, spawn_worker: Spawn, base_env: dict[str, str]
) -> None:
    """The changelog holds a batch whose outcomes may be lost; each is sent again, none twice."""
    w = workload(seed=102)
    victim = spawn_worker(**ns.worker_env(), **armed(CHANGELOG_ACKED, 24))
    await open_accounts(ns, w, victim)
    await pay_through_a_kill(ns, w, victim)

    start = log_size(victim)
    worker = again(spawn_worker, victim)
    await asyncio.to_thread(worker.wait_ready)
    await settle_and_check(ns, w, base_env, worker)

    # Every payment has its outcome (the effects are delivered at least once) ...
    counts = await outcome_records(ns)
    lost = set(w.expected_outcomes) - set(counts)
    assert not lost, f"{len(lost)} payments without an outcome: {sorted(lost)[:5]}"
    # ... and an outcome sent again is the same decision (assert_ledger_matches: one status per
    # event id, every balance exact), never a second application.
    resent = sum(1 for n in counts.values() if n > 1)
    print(f"\noutcomes sent more than once: {resent} of {len(counts)} event ids")
    assert not errors_in(worker, start), errors_in(worker, start)[:5]


@pytest.mark.parametrize("point", [STATE_WRITTEN, CHANGELOG_ACKED])
async def test_kill_with_a_batch_in_flight_the_survivor_takes_over(
    ns: Namespace, spawn_worker: Spawn, base_env: dict[str, str], point: str
) -> None:
    """Two workers; the armed one dies with a batch half done, the other takes its partitions."""
    w = workload(seed=103)
    victim = spawn_worker(**ns.worker_env(), **armed(point, 14))
    survivor = spawn_worker(**ns.worker_env())
    await open_accounts(ns, w, victim, survivor)
    await pay_through_a_kill(ns, w, victim, survivor)

    # Only the survivor can bring the lag to 0: it got the victim's partitions in a rebalance
    # (after the victim's session timed out), with its own batches in flight meanwhile.
    await settle_and_check(ns, w, base_env, survivor)
    for account in random.Random(4).sample(sorted(w.accounts), 10):
        r = survivor.get(f"/v1/accounts/{account}")
        assert r.status == 200 and r.json()["balance"] == w.expected_balance[account], r.body
    assert not errors_in(survivor), errors_in(survivor)[:5]


async def test_kill_then_a_worker_with_an_empty_data_folder_rebuilds_from_the_changelog(
    ns: Namespace, spawn_worker: Spawn, base_env: dict[str, str], tmp_path: Path
) -> None:
    """The owner dies after the changelog write; a new worker, no local state, takes over."""
    w = workload(seed=104)
    owner = spawn_worker(**ns.worker_env(), **armed(CHANGELOG_ACKED, 24))
    await open_accounts(ns, w, owner)
    await pay_through_a_kill(ns, w, owner)

    fresh = tmp_path / "empty-data-folder"
    assert not fresh.exists()
    newcomer = spawn_worker(**ns.worker_env(), ATLAS_DATA_DIR=str(fresh))
    await asyncio.to_thread(newcomer.wait_ready)
    await settle_and_check(ns, w, base_env, newcomer)

    # Its state, read over HTTP, is the model's: rebuilt from the changelog alone.
    for account in random.Random(5).sample(sorted(w.accounts), 10):
        r = newcomer.get(f"/v1/accounts/{account}")
        assert r.status == 200, r.body
        assert r.json()["balance"] == w.expected_balance[account], (account, r.body)
    assert not errors_in(newcomer), errors_in(newcomer)[:5]
