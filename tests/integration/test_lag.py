"""`atlas lag` against a real group: the same numbers as Kafka's ConsumerGroupCommand.

A plain aiokafka consumer stands for a paused worker: it commits K messages per partition,
stops, and N more are published; `atlas lag` must report N where Kafka's own tool does, and
0 with status OK once the rest is consumed and committed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams import topics as names
from streams.kafka import partition_for
from tests.integration.processes import REPO_ROOT, WorkerProcess, http, run_atlas, wait_until
from tests.integration.stack import Stack, tag
from tests.integration.workload import Message, Namespace, payment, produce

pytestmark = pytest.mark.integration

STATE_DIR = Path(os.environ.get("ATLAS_STATE_DIR", REPO_ROOT / ".local"))
TOOLS_LIBS = STATE_DIR / "kafka" / "tools-libs"
CONSUMED = {0: 5, 1: 3}  # committed by the paused consumer, per partition
PUBLISHED_AFTER = {0: 7, 1: 0, 2: 4}  # published once it paused


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def publish(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sends = [
            await producer.send(topic, f"m{p}-{i}".encode(), partition=p)
            for p, n in counts.items()
            for i in range(n)
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def consume_and_commit(
    bootstrap: str, topic: str, group: str, counts: dict[int, int] | None
) -> None:
    """Read `counts` messages per partition (everything if None) and commit what was read."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        await consumer.seek_to_committed(*tps)
        for tp in tps:
            if await consumer.committed(tp) is None:
                await consumer.seek_to_beginning(tp)
        ends = await consumer.end_offsets(tps)
        if counts is None:
            targets = ends
        else:
            targets = {TopicPartition(topic, p): n for p, n in counts.items()}
        positions = {tp: await consumer.position(tp) for tp in targets}
        while any(positions[tp] < targets[tp] for tp in targets):
            batches = await consumer.getmany(*targets, timeout_ms=1000)
            for tp, records in batches.items():
                for r in records:
                    positions[tp] = min(r.offset + 1, targets[tp])
                consumer.seek(tp, positions[tp])
        await consumer.commit({tp: off for tp, off in positions.items() if off > 0})
    finally:
        await consumer.stop()


def atlas_lag(env: dict[str, str], group: str, topic: str, *extra: str) -> dict[str, Any]:
    result = run_atlas(env, "lag", "--group", group, "--topic", topic, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def kafka_describe(bootstrap: str, group: str) -> dict[tuple[str, int], tuple[int, int, int]]:
    """(topic, partition) -> (current offset, log end offset, lag) from ConsumerGroupCommand."""
    if not any(TOOLS_LIBS.glob("kafka-tools-*.jar")):
        fetched = subprocess.run(
            [str(REPO_ROOT / "infra" / "services" / "kafka.sh"), "fetch-tools"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert fetched.returncode == 0, fetched.stderr
    out = subprocess.run(
        [
            "java",
            "-cp",
            f"{TOOLS_LIBS}/*",
            "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows: dict[tuple[str, int], tuple[int, int, int]] = {}
    header: list[str] | None = None
    for line in out.splitlines():
        cells = line.split()
        if cells[:1] == ["GROUP"]:
            header = cells
        elif header and len(cells) >= 6 and cells[0] == group:
            row = dict(zip(header, cells, strict=False))
            if row["CURRENT-OFFSET"].isdigit():
                key = (row["TOPIC"], int(row["PARTITION"]))
                rows[key] = (
                    int(row["CURRENT-OFFSET"]),
                    int(row["LOG-END-OFFSET"]),
                    int(row["LAG"]),
                )
    return rows


def test_lag_of_a_paused_group_matches_kafka_and_returns_to_zero(stack: Stack) -> None:
    run = tag()
    topic, group = f"lag-{run}", f"lag-test-{run}"
    bootstrap = stack.kafka_bootstrap
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap

    asyncio.run(create_topic(bootstrap, topic, 3))
    asyncio.run(publish(bootstrap, topic, CONSUMED))
    asyncio.run(consume_and_commit(bootstrap, topic, group, CONSUMED))
    asyncio.run(publish(bootstrap, topic, PUBLISHED_AFTER))

    report = atlas_lag(env, group, topic, "--samples", "1")
    by_partition = {p["partition"]: p for p in report["partitions"]}
    assert {p: row["lag"] for p, row in by_partition.items()} == PUBLISHED_AFTER
    assert by_partition[0]["committed"] == 5 and by_partition[0]["end"] == 12
    assert by_partition[2]["committed"] is None  # counted from the beginning
    assert report["lag"] == sum(PUBLISHED_AFTER.values())

    kafka = kafka_describe(bootstrap, group)
    assert set(kafka) == {(topic, 0), (topic, 1)}
    for (_, partition), (current, end, lag) in kafka.items():
        row = by_partition[partition]
        assert (row["committed"], row["end"], row["lag"]) == (current, end, lag)

    # A group without members whose offsets do not move has stopped (Burrow's STOP).
    paused = atlas_lag(env, group, topic, "--samples", "2", "--interval", "0.5")
    assert paused["status"] == "STOP"

    asyncio.run(consume_and_commit(bootstrap, topic, group, None))
    caught_up = atlas_lag(env, group, topic, "--samples", "2", "--interval", "0.5")
    assert caught_up["lag"] == 0
    assert caught_up["status"] == "OK"
    assert all(p["lag"] == 0 and p["lag_seconds"] == 0 for p in caught_up["partitions"])
    kafka = kafka_describe(bootstrap, group)
    assert set(kafka) == {(topic, p) for p in range(3)}
    assert all(lag == 0 for _, _, lag in kafka.values())


def test_the_worker_serves_its_own_lag(
    spawn_worker: Callable[..., WorkerProcess], base_env: dict[str, str]
) -> None:
    worker = spawn_worker(ATLAS_LAG_POLL_S="0.5")
    worker.wait_ready()

    def measured() -> dict[str, Any] | None:
        response = worker.get("/v1/ops/lag")
        return dict(response.json()) if response.status == 200 else None

    report = wait_until(measured, 30, what="a lag reading")
    assert report["group"] == base_env["ATLAS_APP_NAME"]
    prefix = base_env["ATLAS_TOPIC_PREFIX"]
    assert {p["topic"] for p in report["partitions"]} == {
        prefix + "atlas.payments.v1",
        prefix + "atlas.ledger.commands.v1",
        prefix + "atlas.ledger.legs.v1",
        prefix + "atlas.ledger.transfer-events.v1",
    }
    assert http("GET", worker.url + "/v1/ops/lag").status == 401  # /v1 needs a key
    health = worker.get("/health").json()
    assert health["checks"]["kafka:consumerLag"][0]["status"] == "pass"
    metrics = worker.get("/metrics").body.decode()
    assert f'atlas_consumer_lag_status{{group="{report["group"]}",status="OK"}} 1.0' in metrics
    assert "atlas_consumer_lag_seconds{" in metrics


def lag_metrics(worker: WorkerProcess, group: str, topic: str) -> dict[int, float]:
    """Partition -> atlas_consumer_lag of `group` on `topic`, from the worker's /metrics."""
    found: dict[int, float] = {}
    prefix = f'atlas_consumer_lag{{group="{group}",partition="'
    for line in worker.get("/metrics").body.decode().splitlines():
        if line.startswith(prefix) and f'topic="{topic}"' in line:
            partition = int(line[len(prefix) :].split('"', 1)[0])
            found[partition] = float(line.rsplit(" ", 1)[1])
    return found


def status_metric(worker: WorkerProcess, group: str) -> str | None:
    for line in worker.get("/metrics").body.decode().splitlines():
        if line.startswith(f'atlas_consumer_lag_status{{group="{group}"') and line.endswith(" 1.0"):
            return line.split('status="', 1)[1].split('"', 1)[0]
    return None


def test_a_paused_workers_backlog_shows_in_the_lag_metric_like_kafkas_tool(
    spawn_worker: Callable[..., WorkerProcess], base_env: dict[str, str]
) -> None:
    """Worker A is stopped (its consumption paused), N payments are published; worker B, which
    watches A's group, reports exactly those N per partition, as ConsumerGroupCommand does.
    A back: lag 0 and status OK."""
    t = tag()
    ns = Namespace(base_env["KAFKA_BOOTSTRAP_SERVERS"], f"l{t}.", f"atlas-l{t}", 4)
    asyncio.run(ns.create_topics())
    payments = ns.topic(names.PAYMENTS)

    a = spawn_worker(**ns.worker_env())
    a.wait_ready()
    # One payment per partition first, so that A commits an offset on each of them (Kafka's
    # tool lists only partitions with a committed offset).
    first_keys: dict[int, bytes] = {}
    for i in range(100):
        first_keys.setdefault(partition_for(f"acc-w{i}".encode(), 4), f"acc-w{i}".encode())
    assert len(first_keys) == 4
    warmup = [
        Message(
            names.PAYMENTS, k, orjson.dumps(payment(f"w-{k.decode()}", "deposit", k.decode(), 5))
        )
        for k in first_keys.values()
    ]
    asyncio.run(produce(ns, warmup))
    asyncio.run(ns.wait_at_rest(60))
    a.stop()  # consumption paused: the group has no member and commits nothing more

    # N payments on known partitions (the key's murmur2 partition, as Atlas expects).
    keys = [f"acc-{i}".encode() for i in range(24)]
    backlog: dict[int, int] = {}
    for key in keys:
        p = partition_for(key, 4)
        backlog[p] = backlog.get(p, 0) + 1
    messages = [
        Message(
            names.PAYMENTS, k, orjson.dumps(payment(f"e-{k.decode()}", "deposit", k.decode(), 1))
        )
        for k in keys
    ]
    asyncio.run(produce(ns, messages))

    b = spawn_worker(
        ATLAS_TOPIC_PREFIX=ns.prefix,
        ATLAS_TOPIC_PARTITIONS="4",
        ATLAS_APP_NAME=f"atlas-watcher-{t}",
        ATLAS_LAG_WATCH_GROUPS=ns.app_name,
        ATLAS_LAG_POLL_S="0.5",
    )
    b.wait_ready()
    seen = wait_until(
        lambda: (m := lag_metrics(b, ns.app_name, payments)) and sum(m.values()) == len(keys) and m,
        30,
        what="the backlog in atlas_consumer_lag",
    )
    assert {p: int(v) for p, v in seen.items() if v} == backlog
    kafka = kafka_describe(ns.bootstrap, ns.app_name)
    for partition, count in backlog.items():
        assert kafka[(payments, partition)][2] == count  # Kafka's own LAG column
    by_api = b.get(f"/v1/ops/lag?group={ns.app_name}").json()
    assert by_api["group"] == ns.app_name and by_api["lag"] >= len(keys)
    assert b.get("/v1/ops/lag?group=not-watched").status == 404

    a.start()  # consumption resumes
    a.wait_ready()
    wait_until(
        lambda: (
            sum(lag_metrics(b, ns.app_name, payments).values()) == 0
            and status_metric(b, ns.app_name) == "OK"
        ),
        60,
        what="lag back to 0 and status OK",
    )
    kafka = kafka_describe(ns.bootstrap, ns.app_name)
    assert all(kafka[(payments, p)][2] == 0 for p in backlog)
