"""The outbox relay against real PostgreSQL and Kafka, run in-process.

Each test gets a fresh migrated database (the relay's advisory lock is per database, so tests
never compete with each other or with a worker) and a test-unique topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from streams import relay as relay_module
from streams.backlog import BACKLOG
from streams.relay import OutboxRelay
from streams.settings import Settings
from tests.integration.processes import REPO_ROOT, free_port, run_atlas
from tests.integration.stack import Stack, tag
from web.metrics import REGISTRY

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 4


@pytest.fixture
def db_url(make_database: Callable[[bool], str]) -> str:
    return make_database(True)


@pytest.fixture
def settings(stack: Stack, db_url: str) -> Settings:
    return Settings().model_copy(
        update={
            "app_name": f"atlas-relay-test-{tag()}",
            "kafka_bootstrap_servers": stack.kafka_bootstrap,
            "database_url": SecretStr(db_url),
            "postgres_timeout_s": 2.0,
            "kafka_timeout_s": 3.0,
        }
    )


@pytest.fixture
async def topic(stack: Stack) -> AsyncIterator[str]:
    name = f"t{tag()}.atlas.ledger.commands.v1"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), 15)
    try:
        await asyncio.wait_for(
            admin.create_topics([NewTopic(name, PARTITIONS, 1)], timeout_ms=10_000), 15
        )
        yield name
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.delete_topics([name], timeout_ms=10_000), 15)
    finally:
        await asyncio.wait_for(admin.close(), 15)


@pytest.fixture
async def pg(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url, timeout=10, command_timeout=10)
    try:
        yield conn
    finally:
        await conn.close(timeout=10)


@contextlib.asynccontextmanager
async def running(*relays: OutboxRelay) -> AsyncIterator[None]:
    try:
        for relay in relays:
            await asyncio.wait_for(relay.start(), 15)
        yield
    finally:
        for relay in relays:
            await asyncio.wait_for(relay.stop(), 30)


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    within_s: float,
    what: str,
    interval: float = 0.1,
) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within_s}s: {what}")
        await asyncio.sleep(interval)


def new_row(topic: str, aggregate_id: str, seq: int, **headers: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "aggregate_type": "account",
        "aggregate_id": aggregate_id,
        "event_type": "RequestTransfer",
        "topic": topic,
        "payload": {"aggregate": aggregate_id, "seq": seq, "amount": 1000 + seq},
        "headers": headers,
    }


async def insert_rows(
    conn: asyncpg.Connection, rows: Iterable[dict[str, Any]], *, notify: bool = True
) -> None:
    """Writes rows the way the write path does: one transaction, NOTIFY inside it."""
    async with conn.transaction():
        for r in rows:
            await conn.execute(
                "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, topic,"
                " payload, headers) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb)",
                r["id"],
                r["aggregate_type"],
                r["aggregate_id"],
                r["event_type"],
                r["topic"],
                orjson.dumps(r["payload"]).decode(),
                orjson.dumps(r["headers"]).decode(),
            )
        if notify:
            await conn.execute("SELECT pg_notify('atlas_outbox', '')")


async def unpublished(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return count


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def read_topic(bootstrap: str, topic: str, count: int, within_s: float = 20) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=10_000,
    )
    await asyncio.wait_for(consumer.start(), 15)
    messages: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + within_s
        while len(messages) < count and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                messages.extend(batch)
    finally:
        await asyncio.wait_for(consumer.stop(), 15)
    return messages


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_rows_are_published_as_specified_and_marked(
    settings: Settings, topic: str, pg: asyncpg.Connection
) -> None:
    # A long poll: rows written after the relay's first round reach Kafka only through NOTIFY.
    relay = OutboxRelay(settings, batch=4, poll_s=30.0)
    published_before = metric("atlas_outbox_published_total")
    async with running(relay):
        await eventually(lambda: relay.is_leader, 10, "the only relay leads")
        await asyncio.sleep(0.5)  # past its first (empty) round
        rows = [
            new_row(
                topic, f"acc-{a}", seq, traceparent=f"00-{a}{seq}-01", **{"correlation-id": "c"}
            )
            for seq in range(3)
            for a in ("ä", "b", "c")
        ]
        await insert_rows(pg, rows)

        messages = await read_topic(settings.kafka_bootstrap_servers, topic, len(rows))
        await eventually(lambda: _is_zero(unpublished(pg)), 10, "rows marked published")

    assert len(messages) == len(rows)
    by_id = {str(r["id"]): r for r in rows}
    for m in messages:
        headers = {k: v for k, v in m.headers}
        row = by_id[headers["event-id"].decode()]
        assert m.key == row["aggregate_id"].encode()
        # jsonb keeps its own key order; the value is that object as compact orjson bytes.
        assert orjson.loads(m.value) == row["payload"]
        assert m.value == orjson.dumps(orjson.loads(m.value))
        assert headers == {
            "traceparent": row["headers"]["traceparent"].encode(),
            "correlation-id": b"c",
            "event-id": str(row["id"]).encode(),
            "event-type": b"RequestTransfer",
        }
    # One aggregate, one partition, in the order the rows were written.
    for aggregate in ("acc-ä", "acc-b", "acc-c"):
        mine = [m for m in messages if m.key == aggregate.encode()]
        assert len({m.partition for m in mine}) == 1
        assert [orjson.loads(m.value)["seq"] for m in sorted(mine, key=lambda m: m.offset)] == [
            0,
            1,
            2,
        ]
    assert metric("atlas_outbox_published_total") - published_before == len(rows)
    assert metric("atlas_relay_leader") == 0  # stopped


async def test_polling_picks_up_rows_written_without_notify(
    settings: Settings, topic: str, pg: asyncpg.Connection
) -> None:
    relay = OutboxRelay(settings, poll_s=0.5)
    async with running(relay):
        await eventually(lambda: relay.is_leader, 10, "the relay leads")
        await insert_rows(pg, [new_row(topic, "acc-1", 0)], notify=False)
        await eventually(
            lambda: _is_zero(unpublished(pg)), 10, "the row published by the polling fallback"
        )
    assert len(await read_topic(settings.kafka_bootstrap_servers, topic, 1)) == 1


async def leader_backend(conn: asyncpg.Connection) -> int | None:
    pid: int | None = await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return pid


async def test_one_relay_leads_and_a_standby_takes_over(
    settings: Settings, topic: str, pg: asyncpg.Connection
) -> None:
    a = OutboxRelay(settings, poll_s=0.5)
    b = OutboxRelay(settings, poll_s=0.5)
    relays = [a, b]

    def leaders() -> list[OutboxRelay]:
        return [r for r in relays if r.is_leader]

    async with running(a, b):
        await eventually(lambda: len(leaders()) == 1, 10, "one relay leads")
        for _ in range(10):  # and only one, over several standby polls
            assert len(leaders()) == 1
            await asyncio.sleep(0.2)
        assert metric("atlas_relay_leader") == 1

        # The leader's session ends (as when its process is SIGKILLed): someone leads again
        # within 10 s and publishes.
        pid = await leader_backend(pg)
        assert pid is not None
        assert await pg.fetchval("SELECT pg_terminate_backend($1)", pid)
        await eventually(lambda: _new_leader_backend(pg, pid), 10, "a new session holds the lock")
        await eventually(lambda: len(leaders()) == 1, 10, "exactly one relay leads again")
        await insert_rows(pg, [new_row(topic, "acc-1", 1)])
        await eventually(lambda: _is_zero(unpublished(pg)), 10, "published after the takeover")

        # The leader stops: the standby takes over within 10 s and publishes.
        old = leaders()[0]
        standby = b if old is a else a
        await asyncio.wait_for(old.stop(), 30)
        assert not old.is_leader
        await eventually(lambda: standby.is_leader, 10, "the standby leads")
        await insert_rows(pg, [new_row(topic, "acc-1", 2)])
        await eventually(lambda: _is_zero(unpublished(pg)), 10, "published by the standby")
        assert metric("atlas_relay_leader") == 1

    messages = await read_topic(settings.kafka_bootstrap_servers, topic, 2)
    assert sorted(orjson.loads(m.value)["seq"] for m in messages) == [1, 2]


async def _new_leader_backend(conn: asyncpg.Connection, old_pid: int) -> bool:
    pid = await leader_backend(conn)
    return pid is not None and pid != old_pid


RELAY_PROCESS = """
import asyncio
from streams.relay import OutboxRelay
from streams.settings import Settings

async def main() -> None:
    await OutboxRelay(Settings(), poll_s=0.5).start()
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.fixture
def relay_process(
    settings: Settings, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A relay in its own process, to be SIGKILLed; stopped by its pid at teardown."""
    app_name = f"{settings.app_name}-proc"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update(
        DATABASE_URL=settings.database_url.get_secret_value(),
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        ATLAS_APP_NAME=app_name,
    )
    with (tmp_path / "relay-process.log").open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", RELAY_PROCESS],
            cwd=REPO_ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc, f"{app_name}-relay"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def lock_holder(conn: asyncpg.Connection) -> str | None:
    """The application name of the session holding the relay lock, if any."""
    name: str | None = await conn.fetchval(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return name


async def test_a_sigkilled_leader_is_replaced_within_seconds(
    settings: Settings,
    topic: str,
    pg: asyncpg.Connection,
    relay_process: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, proc_session = relay_process

    async def process_leads() -> bool:
        return await lock_holder(pg) == proc_session

    await eventually(process_leads, 30, "the relay process leads")
    standby = OutboxRelay(settings, poll_s=0.5)
    async with running(standby):
        for _ in range(8):  # it stands by while the process leads
            await asyncio.sleep(0.25)
            assert not standby.is_leader
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await eventually(lambda: standby.is_leader, 10, "the standby leads")
        assert loop.time() - killed_at < 5
        await insert_rows(pg, [new_row(topic, "acc-1", 7)])
        await eventually(lambda: _is_zero(unpublished(pg)), 10, "published by the new leader")
    messages = await read_topic(settings.kafka_bootstrap_servers, topic, 1)
    assert [orjson.loads(m.value)["seq"] for m in messages] == [7]


async def test_a_failed_publish_leaves_rows_unpublished_for_a_later_retry(
    settings: Settings, topic: str, pg: asyncpg.Connection
) -> None:
    unreachable = settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}", "kafka_timeout_s": 0.5}
    )
    failures_before = metric("atlas_outbox_publish_failures_total")
    broken = OutboxRelay(unreachable, poll_s=0.5, publish_timeout_s=1.0, retry_max_s=0.5)
    rows = [new_row(topic, "acc-1", seq) for seq in range(3)]
    async with running(broken):
        await eventually(lambda: broken.is_leader, 10, "the relay leads")
        await insert_rows(pg, rows)
        await eventually(
            lambda: metric("atlas_outbox_publish_failures_total") - failures_before >= 6,
            15,
            "at least two failed attempts",
        )
        assert await unpublished(pg) == len(rows)
    assert await unpublished(pg) == len(rows)

    # Kafka reachable again (a relay that can reach it takes over): the same rows go out.
    healthy = OutboxRelay(settings, poll_s=0.5)
    async with running(healthy):
        await eventually(lambda: _is_zero(unpublished(pg)), 15, "rows published on retry")
    messages = await read_topic(settings.kafka_bootstrap_servers, topic, len(rows))
    assert [orjson.loads(m.value)["seq"] for m in messages] == [0, 1, 2]


async def test_an_unpublishable_row_is_set_aside_and_holds_up_nothing(
    settings: Settings, topic: str, pg: asyncpg.Connection
) -> None:
    # More rows that can never be sent (over the producer's 1 MiB request limit) than a batch
    # holds, first in line: before, the relay fetched the same head rows every round forever.
    huge = [new_row(topic, "acc-big", seq) for seq in range(3)]
    for row in huge:
        row["payload"]["memo"] = "x" * 1_200_000
    fine = [new_row(topic, "acc-1", seq) for seq in range(5)]
    set_aside_before = metric("atlas_outbox_failed_total")
    await insert_rows(pg, huge)
    await insert_rows(pg, fine)
    relay = OutboxRelay(settings, batch=2, poll_s=0.5)
    async with running(relay):
        await eventually(
            lambda: _is_zero(unpublished_and_kept(pg)),
            15,
            "every row published or set aside",
        )
    messages = await read_topic(settings.kafka_bootstrap_servers, topic, len(fine))
    assert sorted(orjson.loads(m.value)["seq"] for m in messages) == [0, 1, 2, 3, 4]
    assert all(m.key == b"acc-1" for m in messages)

    failed = await relay_module.failed_rows(pg)
    assert {r["id"] for r in failed} == {r["id"] for r in huge}
    assert all("MessageSizeTooLarge" in r["failure"] for r in failed), failed
    assert all(r["payload_bytes"] > 1_200_000 for r in failed)  # kept whole, never reaped
    assert metric("atlas_outbox_failed_total") - set_aside_before == len(huge)
    backlog = await pg.fetchrow(BACKLOG)
    assert (backlog["rows"], backlog["failed"]) == (0, len(huge))  # not part of the backlog

    # An operator gives one back: it is unpublishable again, so it is set aside again.
    assert await relay_module.retry_failed(pg, [huge[0]["id"]]) == [huge[0]["id"]]
    assert len(await relay_module.failed_rows(pg)) == len(huge) - 1
    async with running(OutboxRelay(settings, batch=2, poll_s=0.5)):
        await eventually(
            lambda: _has_rows(relay_module.failed_rows(pg), len(huge)), 15, "set aside again"
        )
    assert metric("atlas_outbox_failed_total") - set_aside_before == len(huge) + 1


async def test_a_row_the_broker_refuses_is_set_aside_and_its_batch_neighbours_go_out(
    settings: Settings, stack: Stack, pg: asyncpg.Connection
) -> None:
    # The topic takes batches of at most 3000 bytes; the producer's own limit is 1 MiB, so
    # only the broker can refuse the big row, and it refuses the whole batch holding it.
    topic = f"t{tag()}.atlas.ledger.commands.v1"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), 15)
    try:
        await asyncio.wait_for(
            admin.create_topics(
                [NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "3000"})],
                timeout_ms=10_000,
            ),
            15,
        )
        rows = [new_row(topic, "acc-1", seq) for seq in range(7)]
        rows[3]["payload"]["memo"] = "x" * 6000
        await insert_rows(pg, rows, notify=False)
        # A long linger: every row goes into one batch with the big one.
        relay = OutboxRelay(settings, poll_s=0.5, linger_ms=200)
        async with running(relay):
            await eventually(
                lambda: _has_rows(relay_module.failed_rows(pg), 1), 15, "the big row set aside"
            )
            await eventually(lambda: _is_zero(unpublished_and_kept(pg)), 15, "the rest published")
        failed = await relay_module.failed_rows(pg)
        assert [r["id"] for r in failed] == [rows[3]["id"]]
        assert "MessageSizeTooLarge" in failed[0]["failure"]
        messages = await read_topic(settings.kafka_bootstrap_servers, topic, 6)
        assert sorted(orjson.loads(m.value)["seq"] for m in messages) == [0, 1, 2, 4, 5, 6]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.delete_topics([topic], timeout_ms=10_000), 15)
        await asyncio.wait_for(admin.close(), 15)


async def unpublished_and_kept(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM outbox WHERE published_at IS NULL AND failed_at IS NULL"
    )
    return count


async def test_the_cli_lists_set_aside_rows_and_gives_them_back(
    topic: str, pg: asyncpg.Connection, db_url: str, base_env: dict[str, str]
) -> None:
    rows = [new_row(topic, "acc-1", seq) for seq in range(3)]
    await insert_rows(pg, rows, notify=False)
    await pg.execute(
        "UPDATE outbox SET failed_at = now(), failure = 'MessageSizeTooLargeError: too big'"
        " WHERE id = ANY($1::uuid[])",
        [r["id"] for r in rows[:2]],
    )
    env = {**base_env, "DATABASE_URL": db_url}

    listed = await asyncio.to_thread(run_atlas, env, "outbox", "failed")
    assert listed.returncode == 0, listed.stderr
    assert all(str(r["id"]) in listed.stdout for r in rows[:2])
    assert str(rows[2]["id"]) not in listed.stdout
    assert "MessageSizeTooLargeError: too big" in listed.stdout
    assert "2 rows set aside" in listed.stdout

    refused = await asyncio.to_thread(run_atlas, env, "outbox", "retry")
    assert refused.returncode != 0 and "name the row ids, or --all" in refused.stderr

    one = await asyncio.to_thread(run_atlas, env, "outbox", "retry", str(rows[0]["id"]))
    assert one.returncode == 0 and "gave 1 rows back" in one.stdout, one.stderr
    rest = await asyncio.to_thread(run_atlas, env, "outbox", "retry", "--all")
    assert rest.returncode == 0 and "gave 1 rows back" in rest.stdout, rest.stderr
    assert await pg.fetchval("SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL") == 0


async def _has_rows(rows: Awaitable[list[Any]], count: int) -> bool:
    return len(await rows) == count


async def test_sends_not_acknowledged_in_time_stay_unpublished(
    settings: Settings, topic: str, pg: asyncpg.Connection
) -> None:
    # Records that linger past the publish deadline: the relay gives up on them, drops the
    # producer still holding them, and retries with a fresh one.
    failures_before = metric("atlas_outbox_publish_failures_total")
    slow = OutboxRelay(settings, poll_s=0.5, publish_timeout_s=0.5, linger_ms=5000, retry_max_s=0.5)
    rows = [new_row(topic, "acc-1", seq) for seq in range(2)]
    async with running(slow):
        await eventually(lambda: slow.is_leader, 10, "the relay leads")
        await insert_rows(pg, rows)
        await eventually(
            lambda: metric("atlas_outbox_publish_failures_total") - failures_before >= 4,
            15,
            "at least two timed-out attempts",
        )
        assert await unpublished(pg) == len(rows)
    assert await unpublished(pg) == len(rows)


async def test_reaper_deletes_only_old_published_rows_and_expired_keys(
    settings: Settings, topic: str, pg: asyncpg.Connection
) -> None:
    old_published = [new_row(topic, "acc-1", seq) for seq in range(5)]
    recent_published = new_row(topic, "acc-1", 10)
    unpublished_old = new_row(topic, "acc-1", 20)
    await insert_rows(pg, [*old_published, recent_published, unpublished_old], notify=False)
    async with pg.transaction():
        await pg.execute(
            "UPDATE outbox SET published_at = now() - interval '2 days' WHERE id = ANY($1::uuid[])",
            [r["id"] for r in old_published],
        )
        await pg.execute(
            "UPDATE outbox SET published_at = now() - interval '10 minutes' WHERE id = $1",
            recent_published["id"],
        )
        await pg.execute(
            "UPDATE outbox SET created_at = now() - interval '3 days' WHERE id = $1",
            unpublished_old["id"],
        )
        client_id = await pg.fetchval(
            "INSERT INTO api_clients (name, key_prefix, key_hash) VALUES ('c', 'k', 'h')"
            " RETURNING id"
        )
        for key, expires_in in [("gone-1", -1), ("gone-2", -60), ("gone-3", -5), ("kept", 60)]:
            await pg.execute(
                "INSERT INTO idempotency_keys (client_id, idempotency_key, fingerprint, state,"
                " expires_at) VALUES ($1, $2, 'f', 'completed', now() + $3::interval)",
                client_id,
                key,
                timedelta(minutes=expires_in),
            )

    relay = OutboxRelay(
        settings, poll_s=0.5, reap_every_s=0.5, published_retention_s=3600, reap_chunk=2
    )
    async with running(relay):

        async def reaped() -> bool:
            left = await pg.fetchval(
                "SELECT count(*) FROM outbox WHERE id = ANY($1::uuid[])",
                [r["id"] for r in old_published],
            )
            keys = await pg.fetchval("SELECT count(*) FROM idempotency_keys")
            return bool(left == 0 and keys == 1)

        await eventually(reaped, 10, "old published rows and expired keys reaped")
        await eventually(lambda: _is_zero(unpublished(pg)), 10, "the old unpublished row published")
        await asyncio.sleep(1.5)  # a few more reaps

    remaining = {r["id"] for r in await pg.fetch("SELECT id FROM outbox")}
    assert remaining == {recent_published["id"], unpublished_old["id"]}
    keys = [
        r["idempotency_key"] for r in await pg.fetch("SELECT idempotency_key FROM idempotency_keys")
    ]
    assert keys == ["kept"]
