"""Kafka's transitions, against fakes: which errors are retried, readiness of topics, routing.

The integration tier restarts a real broker under load (tests/integration/
test_kafka_transitions.py); these pin each mechanism on its own, and the aiokafka and Faust
attributes it leans on, so that an upgrade that moves them fails here.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiokafka import AIOKafkaProducer
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    NotEnoughReplicasError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from faust.exceptions import ProducerSendError
from faust.types import TP

from streams.agents import retrying_kafka
from streams.app import AtlasApp
from streams.kafka import SafeProducer, retriable
from streams.kafka_metadata import unready
from tables.store import LedgerTable
from tests.unit.conftest import unit_app
from web.reads import TableReads

# ---- which errors are which ------------------------------------------------------------------

RETRIABLE = [
    NotLeaderForPartitionError(),
    LeaderNotAvailableError(),
    RequestTimedOutError(),
    NotEnoughReplicasError(),
    UnknownTopicOrPartitionError(),
    KafkaConnectionError("connection lost"),
    NodeNotReadyError("node 1 not ready"),
    KafkaTimeoutError(),
    ConnectionResetError(),
    TimeoutError(),
]
FATAL = [
    MessageSizeTooLargeError(),
    RecordListTooLargeError(),
    InvalidTopicError(),
    TopicAuthorizationFailedError(),
    OutOfOrderSequenceNumber(),
    ProducerFenced(),
    ValueError("a bug"),
    ProducerSendError("no cause"),
]


@pytest.mark.parametrize("exc", RETRIABLE, ids=lambda e: type(e).__name__)
def test_kafka_transitions_are_retriable(exc: BaseException) -> None:
    assert retriable(exc)


@pytest.mark.parametrize("exc", FATAL, ids=lambda e: type(e).__name__)
def test_refusals_for_good_are_fatal(exc: BaseException) -> None:
    assert not retriable(exc)


def test_a_wrapped_send_error_is_judged_by_its_cause() -> None:
    def wrapped(cause: BaseException) -> ProducerSendError:
        try:
            raise ProducerSendError(f"Error while sending: {cause!r}") from cause
        except ProducerSendError as exc:
            return exc

    assert retriable(wrapped(NotLeaderForPartitionError()))
    assert not retriable(wrapped(MessageSizeTooLargeError()))


# ---- an agent's batch runs again on a retriable error -----------------------------------------


class FlakyProcess:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[list[Any]] = []

    async def __call__(self, events: list[Any]) -> None:
        self.calls.append(events)
        if self.failures:
            raise self.failures.pop(0)


async def test_a_batch_runs_again_after_a_leader_election() -> None:
    process = FlakyProcess(NotLeaderForPartitionError(), KafkaTimeoutError())
    await retrying_kafka(5.0, first_delay_s=0.001)(process, ["e1", "e2"])
    assert process.calls == [["e1", "e2"]] * 3


async def test_a_fatal_error_is_raised_at_once() -> None:
    process = FlakyProcess(MessageSizeTooLargeError())
    with pytest.raises(MessageSizeTooLargeError):
        await retrying_kafka(5.0, first_delay_s=0.001)(process, ["e1"])
    assert len(process.calls) == 1


async def test_retries_end_with_the_delivery_timeout() -> None:
    process = FlakyProcess(*[NotLeaderForPartitionError()] * 10_000)
    with pytest.raises(NotLeaderForPartitionError):
        await retrying_kafka(0.2, first_delay_s=0.01, max_delay_s=0.02)(process, ["e1"])
    assert 2 <= len(process.calls) < 10_000


# ---- the producer: idempotent, bounded by the delivery timeout ---------------------------------


async def test_the_producer_is_idempotent_and_its_batches_live_for_the_delivery_timeout(
    tmp_path: Path,
) -> None:
    producer = unit_app(tmp_path, kafka_delivery_timeout_s=90).producer
    assert isinstance(producer, SafeProducer)
    client = producer._new_producer()  # what Faust starts (not connected here)
    try:
        assert isinstance(client, AIOKafkaProducer)
        # aiokafka internals this relies on (pinned <0.15): an idempotent producer has a
        # transaction manager, and then never expires a batch that Kafka refused retriably;
        # the request timeout is the life of a batch waiting for a leader.
        assert client._txn_manager is not None
        assert client._request_timeout_ms == 90_000
        assert client._message_accumulator._batch_ttl == 90.0
    finally:
        await client.stop()
    assert producer.flush_timeout_s > 90


# ---- is a topic placeable: the producer's own metadata ---------------------------------------


def metadata(topics: dict[str, list[int]]) -> dict[str, Any]:
    """A metadata answer: each topic's partitions with their leaders (-1: none)."""
    return {
        "brokers": [(1, "127.0.0.1", 9092, None)],
        "topics": [
            {
                "error_code": 0,
                "topic": name,
                "partitions": [
                    {"error_code": 0, "partition": p, "leader": leader}
                    for p, leader in enumerate(leaders)
                ],
            }
            for name, leaders in topics.items()
        ],
    }


class FakeClient:
    def __init__(self, topics: dict[str, list[int]]) -> None:
        self.cluster = ClusterMetadata()
        self.update(topics)
        self.added: list[str] = []
        self.refreshes = 0

    def update(self, topics: dict[str, list[int]]) -> None:
        answer = metadata(topics)
        response = SimpleNamespace(
            API_VERSION=1,
            brokers=[(1, "127.0.0.1", 9092, None)],
            controller_id=1,
            topics=[
                (
                    t["error_code"],
                    t["topic"],
                    False,
                    [
                        (p["error_code"], p["partition"], p["leader"], [1], [1])
                        for p in t["partitions"]
                    ],
                )
                for t in answer["topics"]
            ],
        )
        self.cluster.update_metadata(response)

    def add_topic(self, topic: str) -> None:
        self.added.append(topic)

    def force_metadata_update(self) -> None:
        self.refreshes += 1


def with_client(app: AtlasApp, client: FakeClient) -> SafeProducer:
    producer = app.producer
    assert isinstance(producer, SafeProducer)
    producer._producer = SimpleNamespace(client=client)  # as Faust's on_start sets it
    return producer


def test_topics_missing_or_leaderless_in_the_producers_metadata_are_not_placeable(
    app: AtlasApp,
) -> None:
    client = FakeClient({"ready": [1, 1], "electing": [1, -1]})
    producer = with_client(app, client)
    assert producer.untracked(["ready"]) == []
    assert client.refreshes == 0

    assert producer.untracked(["ready", "electing", "new"]) == ["electing", "new"]
    assert client.added == ["electing", "new"]
    assert client.refreshes == 1
    producer.untracked(["new"])
    assert client.refreshes == 1, "refreshes are at most one a second"

    client.update({"ready": [1, 1], "electing": [1, 1], "new": [1]})
    assert producer.untracked(["ready", "electing", "new"]) == []


def test_an_unstarted_producer_places_nothing(app: AtlasApp) -> None:
    producer = app.producer
    assert isinstance(producer, SafeProducer)
    assert producer.untracked(["a", "b"]) == ["a", "b"]


# ---- is a topic ready: the cluster's answer --------------------------------------------------


class AnsweringClient:
    """Answers metadata requests with a fixed document, recording what was asked."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.requests: list[Any] = []

    def get_random_node(self) -> int:
        return 1

    async def send(self, node: int, request: Any) -> Any:
        self.requests.append(request)
        return SimpleNamespace(to_object=lambda: self.answer)


async def test_unready_names_missing_and_leaderless_topics_and_creates_none() -> None:
    answer = metadata({"ready": [1, 1], "electing": [1, -1, -1]})
    answer["topics"].append(
        {"error_code": LeaderNotAvailableError.errno, "topic": "creating", "partitions": []}
    )
    client = AnsweringClient(answer)
    reasons = await unready(client, ["ready", "electing", "creating", "absent"])  # type: ignore[arg-type]
    assert reasons == {
        "electing": "partitions [1, 2] have no leader",
        "creating": "does not exist",
        "absent": "does not exist",
    }
    assert client.requests[0]._topics == ["ready", "electing", "creating", "absent"]
    assert client.requests[0]._allow_auto_topic_creation is False


async def test_readiness_waits_for_the_cluster_then_for_the_producers_metadata(
    app: AtlasApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = app.kafka_topic_names()
    prefix = app.settings.topic_prefix
    assert f"{prefix}atlas.payments.v1" in names and f"{prefix}atlas.dlq.v1" in names
    assert f"{app.conf.id}-accounts-changelog" in names

    cluster: dict[str, str] = {names[0]: "partitions [0] have no leader"}

    async def kafka_unready(topics: list[str]) -> dict[str, str]:
        return {t: why for t, why in cluster.items() if t in topics}

    monkeypatch.setattr(app.resources, "kafka_unready", kafka_unready)
    await app.resources.breakers.start()
    client = FakeClient({})
    with_client(app, client)
    with pytest.raises(Exception, match="have no leader"):
        await app.kafka_topics_ready()
    assert client.added == [], "nothing is asked of the producer before the cluster has it"

    cluster.clear()
    with pytest.raises(Exception, match="not in the producer's metadata yet"):
        await app.kafka_topics_ready()
    assert client.added == names

    client.update({name: [1] * 8 for name in names})
    assert await app.kafka_topics_ready() == len(names)


# ---- a read that cannot be routed is a 503 ----------------------------------------------------


class FakeRouter:
    def __init__(self, outcome: BaseException | web.StreamResponse) -> None:
        self.outcome = outcome

    async def route_req(self, *args: Any) -> web.StreamResponse:
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def reads_of(app: AtlasApp, router: FakeRouter, client: FakeClient) -> TableReads:
    producer = with_client(app, client)
    stand_in = SimpleNamespace(
        ledger_tables=app.ledger_tables,
        tables=SimpleNamespace(actives_ready=True),
        rebalancing=False,
        producer=producer,
        router=router,
        web=None,
    )
    return TableReads(stand_in)


def request() -> web.Request:
    return make_mocked_request("GET", "/v1/accounts/acc-1", match_info={"account_id": "acc-1"})


def known(app: AtlasApp) -> FakeClient:
    return FakeClient({app.ledger_tables.accounts.changelog_topic.get_topic_name(): [1] * 8})


async def test_a_read_whose_changelog_has_no_metadata_yet_is_a_503(app: AtlasApp) -> None:
    client = FakeClient({})
    reads = reads_of(app, FakeRouter(AssertionError("must not route")), client)
    response = await reads.get_account(request())
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert response.content_type == "application/problem+json"
    assert client.refreshes == 1


@pytest.mark.parametrize(
    "failure", [NotLeaderForPartitionError(), KafkaConnectionError("gone"), TimeoutError()]
)
async def test_a_read_whose_owner_cannot_be_found_is_a_503_and_refreshes(
    app: AtlasApp, failure: BaseException
) -> None:
    client = known(app)
    reads = reads_of(app, FakeRouter(failure), client)
    response = await reads.get_account(request())
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert client.refreshes == 1


async def test_an_owners_503_keeps_its_retry_after(app: AtlasApp) -> None:
    owners = web.Response(status=503, text='{"status": 503}', content_type="application/json")
    reads = reads_of(app, FakeRouter(owners), known(app))
    response = await reads.get_account(request())
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert response.content_type == "application/problem+json"


# ---- a partition not held without a break is replayed in full ---------------------------------


def test_a_partition_held_without_a_break_keeps_its_persisted_offset(
    app: AtlasApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = app.ledger_tables.accounts
    assert isinstance(table, LedgerTable)
    tp = TP(table.changelog_topic.get_topic_name(), 3)
    monkeypatch.setattr(table.data, "persisted_offset", lambda _: 41)

    def at(generation: int) -> int | None:
        app.consumer_generation_id = generation
        offset: int | None = table.persisted_offset(tp)
        return offset

    assert at(1) == 41, "a process's first assignment trusts its store"
    assert at(2) == 41, "held in the generation before"
    assert at(2) == 41, "asked twice in one rebalance"
    assert at(5) is None, "out of the group (or the partition elsewhere) in 3 and 4: replay"
    assert at(6) == 41, "held again from 5 on"


def test_a_partition_without_a_persisted_offset_is_read_from_the_beginning_anyway(
    app: AtlasApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = app.ledger_tables.accounts
    tp = TP(table.changelog_topic.get_topic_name(), 0)
    monkeypatch.setattr(table.data, "persisted_offset", lambda _: None)
    app.consumer_generation_id = 7
    assert table.persisted_offset(tp) is None
