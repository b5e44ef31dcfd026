"""Kafka's own transitions: a brand-new cluster, and a broker that restarts under load.

Each test runs on a broker of its own (`tests.integration.brokers`): a cluster whose data
folder starts empty, as a new user's does, and which the test stops with SIGTERM and SIGKILL
by the pid its start script recorded.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams import topics as names
from streams.operations import read_topic
from tests.integration.brokers import OwnKafka
from tests.integration.processes import Response, WorkerProcess, http, run_atlas, wait_until
from tests.integration.stack import tag
from tests.integration.workload import (
    Message,
    Namespace,
    final_balances,
    payment,
    produce,
    transfer_finals,
)

pytestmark = pytest.mark.integration
Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[OwnKafka]:
    broker = OwnKafka(tmp_path / "kafka-state")
    broker.start()
    yield broker
    broker.stop()


class Client:
    """An HTTP client of one worker that keeps every status it was answered."""

    def __init__(self, worker: WorkerProcess, api_key: str) -> None:
        self.worker, self.api_key = worker, api_key
        self.statuses: Counter[int] = Counter()
        self.server_errors: list[tuple[str, str, int, bytes]] = []

    def _call(self, method: str, path: str, body: object | None = None) -> Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            headers["Idempotency-Key"] = uuid.uuid4().hex
            data = json.dumps(body).encode()
        r = http(method, self.worker.url + path, headers=headers, data=data, timeout=15)
        self.statuses[r.status] += 1
        if r.status >= 500 and r.status != 503:  # a 503 is a refusal, not an error
            self.server_errors.append((method, path, r.status, r.body[:300]))
        return r

    def open_account(self, account_id: str) -> Response:
        body = {"account_id": account_id, "owner_email": f"{account_id}@example.com"}
        return self._call("POST", "/v1/accounts", {**body, "currency": "EUR"})

    def account(self, account_id: str) -> Response:
        return self._call("GET", f"/v1/accounts/{account_id}")

    def transfer(self, source: str, target: str, amount: int) -> Response:
        body = {"from_account": source, "to_account": target, "amount": amount}
        return self._call("POST", "/v1/transfers", {**body, "currency": "EUR"})


def kcat_produce(bootstrap: str, topic: str, lines: list[str]) -> None:
    """Publish `key:value` lines as a librdkafka producer does (CRC32 partitioner)."""
    subprocess.run(
        ["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t"],
        input="\n".join(lines) + "\n",
        text=True,
        check=True,
        timeout=60,
    )


def test_a_brand_new_cluster_serves_its_first_users_without_a_5xx(
    own_kafka: OwnKafka, spawn_worker: Spawn, api_key: str
) -> None:
    t = tag()
    prefix = f"t{t}."
    worker = spawn_worker(
        KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap,
        ATLAS_TOPIC_PREFIX=prefix,
        ATLAS_APP_NAME=f"atlas-t{t}",
    )
    worker.wait_ready(timeout=120)
    client = Client(worker, api_key)
    ids = [f"first-{t}-{i}" for i in range(20)]

    with ThreadPoolExecutor(len(ids)) as pool:
        opened = list(pool.map(client.open_account, ids))
        assert [r.status for r in opened] == [202] * len(ids), [r.body for r in opened]

        def read_until(account_id: str, done: Callable[[Response], bool]) -> Response:
            def attempt() -> Response | None:
                r = client.account(account_id)
                return r if done(r) else None

            return wait_until(
                attempt,
                timeout=30,
                interval=0.2,
                what=f"account {account_id}",
            )

        list(pool.map(lambda a: read_until(a, lambda r: r.status == 200), ids))
        deposits = [
            json.dumps(payment(f"dep-{account_id}", "deposit", account_id, 100 + i))
            for i, account_id in enumerate(ids)
        ]
        kcat_produce(
            own_kafka.bootstrap,
            f"{prefix}atlas.payments.v1",
            [f"{a}\t{d}" for a, d in zip(ids, deposits, strict=True)],
        )
        credited = list(
            pool.map(
                lambda a: read_until(
                    a, lambda r: r.status == 200 and r.json()["balance"] > 0
                ).json()["balance"],
                ids,
            )
        )

    assert credited == [100 + i for i in range(len(ids))]
    assert not client.server_errors, client.server_errors
    assert set(client.statuses) <= {200, 202, 404}, client.statuses
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()


class Traffic:
    """Payments to Kafka and transfers and reads over HTTP, until stopped; every answer kept.

    Payments are deposits (a tenth of them sent again), so the expected balances do not depend
    on the order Kafka delivers them in; transfers are small against the funded balances, so
    each one completes whatever the interleaving.
    """

    def __init__(
        self, bootstrap: str, topic: str, clients: list[Client], accounts: list[str]
    ) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.clients, self.accounts = clients, accounts
        self.rng = random.Random(7)
        self.deposits: dict[str, tuple[str, int]] = {}  # event id -> (account, amount)
        self.sent = 0
        self.transfers: dict[str, tuple[str, str, int]] = {}  # id -> (from, to, amount)
        self.writes: Counter[int] = Counter()
        self.reads: Counter[int] = Counter()
        self.refusals_without_retry_after = 0
        self.ready: list[tuple[float, int, int]] = []  # (monotonic, worker index, status)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._payments, daemon=True),
            threading.Thread(target=self._writes, daemon=True),
            threading.Thread(target=self._reads, daemon=True),
            threading.Thread(target=self._readiness, daemon=True),
        ]
        self.payment_errors: list[BaseException] = []

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)

    def _payments(self) -> None:
        asyncio.run(self._produce())

    async def _produce(self) -> None:
        # Idempotent, and patient enough to outlast the outages: every payment is delivered.
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            enable_idempotence=True,
            request_timeout_ms=150_000,
            linger_ms=5,
        )
        await producer.start()
        pending: list[asyncio.Future[object]] = []
        try:
            n = 0
            while not self._stop.is_set():
                n += 1
                if self.deposits and self.rng.random() < 0.1:
                    event_id = self.rng.choice(list(self.deposits))
                else:
                    event_id = f"pay-{n}"
                    account = self.rng.choice(self.accounts)
                    self.deposits[event_id] = (account, self.rng.randint(1, 100))
                account, amount = self.deposits[event_id]
                body = orjson.dumps(payment(event_id, "deposit", account, amount))
                pending.append(await producer.send(self.topic, body, key=account.encode()))
                self.sent += 1
                await asyncio.sleep(0.02)
            for outcome in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    self.payment_errors.append(outcome)
        finally:
            await producer.stop()

    def _writes(self) -> None:
        while not self._stop.is_set():
            source, target = self.rng.sample(self.accounts, 2)
            amount = self.rng.randint(1, 5)
            r = self.rng.choice(self.clients).transfer(source, target, amount)
            self.writes[r.status] += 1
            if r.status == 202:
                self.transfers[r.json()["transfer_id"]] = (source, target, amount)
            elif r.status == 503 and "Retry-After" not in r.headers:
                self.refusals_without_retry_after += 1
            self._stop.wait(0.05)

    def _reads(self) -> None:
        while not self._stop.is_set():
            r = self.rng.choice(self.clients).account(self.rng.choice(self.accounts))
            self.reads[r.status] += 1
            if r.status == 503 and "Retry-After" not in r.headers:
                self.refusals_without_retry_after += 1
            self._stop.wait(0.05)

    def _readiness(self) -> None:
        while not self._stop.is_set():
            for i, client in enumerate(self.clients):
                status = http("GET", client.worker.url + "/health/ready", timeout=10).status
                self.ready.append((time.monotonic(), i, status))
            self._stop.wait(0.25)

    def ready_again_after(self, moment: float, timeout_s: float) -> float:
        """Seconds from `moment` until every worker answered readiness with 200."""

        def all_ready() -> float | None:
            since = [(t, i) for t, i, s in list(self.ready) if t >= moment and s == 200]
            firsts = {i: min(t for t, j in since if j == i) for _, i in since}
            if len(firsts) == len(self.clients):
                return max(firsts.values()) - moment
            return None

        return float(wait_until(all_ready, timeout_s, what="every worker ready again"))

    def not_ready_between(self, start: float, end: float) -> set[int]:
        """The workers that answered readiness 503 between `start` and `end`."""
        return {i for t, i, s in list(self.ready) if start <= t <= end and s == 503}


FUNDS = 1_000_000


async def where_are(ns: Namespace, env: dict[str, str], transfers: dict[str, object]) -> str:
    """Where unfinished transfers stand: in the outbox, on the commands topic, in events."""
    ids = list(transfers)
    conn = await asyncpg.connect(env["DATABASE_URL"], timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT payload->>'transfer_id' AS id, published_at IS NOT NULL AS published,"
            " failed_at IS NOT NULL AS failed FROM outbox"
            " WHERE payload->>'transfer_id' = ANY($1::text[])",
            ids,
        )
    finally:
        await conn.close()
    commands = await read_topic(ns.bootstrap, ns.topic(names.COMMANDS))
    on_topic = {i for i in ids for r in commands if i.encode() in (r.value or b"")}
    events = await read_topic(ns.bootstrap, ns.topic(names.TRANSFER_EVENTS))
    evented = Counter(i for i in ids for r in events if i.encode() in (r.value or b""))
    states = Counter((r["published"], r["failed"]) for r in rows)
    return (
        f"{len(ids)} unfinished; outbox rows (published, failed): {states};"
        f" on the commands topic: {len(on_topic)};"
        f" with transfer events: {len(evented)}; sample {ids[:3]}"
    )


def test_a_broker_restart_under_load_is_survived_and_every_effect_lands_once(
    own_kafka: OwnKafka, spawn_worker: Spawn, api_key: str, base_env: dict[str, str]
) -> None:
    t = tag()
    ns = Namespace(own_kafka.bootstrap, f"t{t}.", f"atlas-t{t}", 4)
    env = {**ns.worker_env(), "KAFKA_BOOTSTRAP_SERVERS": own_kafka.bootstrap}
    workers = [spawn_worker(**env), spawn_worker(**env)]
    for worker in workers:
        worker.wait_ready(timeout=120)
    clients = [Client(worker, api_key) for worker in workers]
    accounts = [f"acct-{t}-{i}" for i in range(12)]
    for i, account_id in enumerate(accounts):
        assert clients[i % 2].open_account(account_id).status == 202
    funding = [
        Message(names.PAYMENTS, a.encode(), orjson.dumps(payment(f"fund-{a}", "deposit", a, FUNDS)))
        for a in accounts
    ]
    wait_until(
        lambda: all(clients[0].account(a).status == 200 for a in accounts),
        timeout=60,
        what="accounts open",
    )
    asyncio.run(produce(ns, funding))

    with Traffic(own_kafka.bootstrap, ns.topic(names.PAYMENTS), clients, accounts) as traffic:
        time.sleep(3)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            down_at = time.monotonic()
            own_kafka.kill(sig)
            time.sleep(6)
            own_kafka.start()
            up_at = time.monotonic()
            assert traffic.not_ready_between(down_at, up_at) == {0, 1}, (sig, traffic.ready[-8:])
            took = traffic.ready_again_after(up_at, timeout_s=15)
            print(f"{sig.name}: ready {took:.1f}s after the broker answered again")
            time.sleep(3)

    alive = [w.proc is not None and w.proc.poll() is None for w in workers]
    assert alive == [True, True], "\n".join(w.log_tail() for w in workers)
    assert not traffic.payment_errors, traffic.payment_errors[:3]
    assert set(traffic.writes) <= {202, 503}, traffic.writes
    assert set(traffic.reads) <= {200, 503}, traffic.reads
    assert traffic.refusals_without_retry_after == 0
    for client in clients:
        assert not client.server_errors, client.server_errors[:5]
    assert traffic.writes[202] > 0 and traffic.sent > 0

    # At rest: every payment applied once, every accepted transfer completed once.
    def unfinished() -> dict[str, set[str] | None]:
        finals = asyncio.run(transfer_finals(ns))
        return {t: finals.get(t) for t in traffic.transfers if finals.get(t) != {"completed"}}

    try:
        wait_until(lambda: not unfinished(), timeout=90, interval=2, what="every transfer final")
    except AssertionError as exc:
        where = asyncio.run(where_are(ns, base_env, unfinished()))
        raise AssertionError(f"{exc}\n{where}") from None
    asyncio.run(ns.wait_at_rest(120))
    assert not unfinished()
    expected = dict.fromkeys(accounts, FUNDS)
    for account_id, amount in traffic.deposits.values():
        expected[account_id] += amount
    for source, target, amount in traffic.transfers.values():
        expected[source] -= amount
        expected[target] += amount
    assert asyncio.run(final_balances(ns)) == expected
    verify = run_atlas({**base_env, **env}, "verify", "--wait", "30")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verify: OK" in verify.stdout
