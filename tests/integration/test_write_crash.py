"""Accepted writes survive SIGKILLs of the relay's worker: each 202 is applied exactly once.

Two workers both run the relay; one leads. Under a steady stream of transfer requests the
leader's worker is killed with SIGKILL and started again, several times. Clients retry a failed
request with the same Idempotency-Key, as the API asks. Afterwards every transfer that got 202
has exactly one final status, no other transfer exists, and `atlas verify` passes.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable

import asyncpg
import orjson
import pytest

from streams import topics as names
from tests.integration.processes import WorkerProcess
from tests.integration.stack import tag
from tests.integration.test_ledger import atlas, metric_total
from tests.integration.test_writes import authed_get, post
from tests.integration.workload import Message, Namespace, payment, produce, transfer_finals

pytestmark = pytest.mark.integration
Spawn = Callable[..., WorkerProcess]


async def outbox_drained(database_url: str, timeout_s: float) -> None:
    """Until no outbox row is left to publish."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            left = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND failed_at IS NULL"
            )
            if left == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{left} outbox rows still unpublished after {timeout_s}s")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def test_sigkilled_relay_loses_no_accepted_write(
    spawn_worker: Spawn, base_env: dict[str, str], api_key: str
) -> None:
    key = api_key
    t = tag()
    ns = Namespace(base_env["KAFKA_BOOTSTRAP_SERVERS"], f"c{t}.", f"atlas-c{t}", 4)
    asyncio.run(ns.create_topics())
    env = ns.worker_env()
    workers = [spawn_worker(**env), spawn_worker(**env)]
    for w in workers:
        w.wait_ready()

    accounts = [f"crash-{i}" for i in range(10)]
    for a in accounts:
        r = post(
            workers[0],
            "/v1/accounts",
            {"owner_email": f"{a}@example.com", "currency": "EUR", "account_id": a},
            key,
            f"open-{a}",
        )
        assert r.status == 202, r.body
    deposits = [
        Message(
            names.PAYMENTS, a.encode(), orjson.dumps(payment(f"dep-{a}", "deposit", a, 100_000))
        )
        for a in accounts
    ]
    deadline = time.monotonic() + 60
    while any(authed_get(workers[0], f"/v1/accounts/{a}", key).status != 200 for a in accounts):
        assert time.monotonic() < deadline, "accounts not opened"
        time.sleep(0.5)
    asyncio.run(produce(ns, deposits))

    accepted: dict[str, str] = {}  # idempotency key -> transfer id
    stop = threading.Event()

    def client() -> None:
        rng = random.Random(1)
        n = 0
        while not stop.is_set():
            n += 1
            idem = f"tr-{n}"
            src, dst = rng.sample(accounts, 2)
            body = {
                "from_account": src,
                "to_account": dst,
                "amount": rng.randint(1, 50),
                "currency": "EUR",
            }
            for _ in range(50):  # retry with the same key until answered
                target = rng.choice([w for w in workers if w.proc and w.proc.poll() is None])
                try:
                    r = post(target, "/v1/transfers", body, key, idem)
                except OSError:
                    r = None
                if r is not None and r.status == 202:
                    accepted[idem] = r.json()["transfer_id"]
                    break
                time.sleep(0.2)
            time.sleep(0.02)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    kills = 0
    try:
        for _ in range(3):
            time.sleep(4)
            leader = next(
                (i for i, w in enumerate(workers) if metric_total(w, "atlas_relay_leader") == 1),
                None,
            )
            assert leader is not None, "no relay leads"
            victim = workers[leader]
            victim.kill()
            kills += 1
            workers[leader] = spawn_worker(
                port=victim.port, ATLAS_DATA_DIR=victim.env["ATLAS_DATA_DIR"], **env
            )
            workers[leader].wait_ready(120)
        time.sleep(3)
    finally:
        stop.set()
        thread.join(timeout=60)

    assert kills == 3 and len(accepted) > 50
    # The relay publishes every accepted row (a new leader may take seconds to take over),
    # and only then is the ledger's input at rest for good.
    asyncio.run(outbox_drained(base_env["DATABASE_URL"], 120))
    asyncio.run(ns.wait_at_rest(180))
    finals = asyncio.run(transfer_finals(ns))
    ids = set(accepted.values())
    missing = ids - set(finals)
    assert not missing, f"{len(missing)} accepted transfers never reached the ledger"
    assert set(finals) == ids, "a transfer exists that no client was told about"
    assert all(len(s) == 1 for s in finals.values())
    verify = atlas(ns, base_env, "verify", "--wait", "30")
    assert verify.returncode == 0, verify.stdout + verify.stderr
