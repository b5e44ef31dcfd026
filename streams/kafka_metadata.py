"""Cluster metadata asked for only what is needed.

An aiokafka client that tracks no topics asks the cluster for the metadata of every topic,
and decodes the answer in the event loop: about 100 ms of blocked loop on a broker with 3,000
topics, during which no request of the worker is served. The lag monitor did that every
`lag_poll_s` and the Kafka health check on every probe, which showed as the write path's tail
latency (p99 28-32 ms instead of 7 ms in make bench-http).

`brokers` asks for no topic at all; `track_existing` narrows a client to the given topics
that exist, so that its refreshes decode those and no others. Neither creates a topic, even
where the broker auto-creates topics named in metadata requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest

OFFSETS_TOPIC = "__consumer_offsets"  # every cluster with a consumer group has it


async def _metadata(client: AIOKafkaClient, topics: list[str]) -> dict[str, Any]:
    node = client.get_random_node()
    if node is None:
        raise ConnectionError("no Kafka broker known to ask for metadata")
    request = MetadataRequest(topics, allow_auto_topic_creation=False)
    response = await client.send(node, request)
    obj: dict[str, Any] = response.to_object()
    return obj


async def brokers(client: AIOKafkaClient) -> int:
    """How many brokers the cluster reports, asking for no topic's metadata."""
    return len((await _metadata(client, []))["brokers"])


async def existing(client: AIOKafkaClient, topics: Sequence[str]) -> list[str]:
    """Those of `topics` the cluster has (none is created by asking)."""
    if not topics:
        return []
    answer = await _metadata(client, list(topics))
    return [t["topic"] for t in answer["topics"] if t["error_code"] == 0]


async def unready(client: AIOKafkaClient, topics: Sequence[str]) -> dict[str, str]:
    """Those of `topics` that cannot take a record yet, each with the reason.

    A topic is ready when the cluster has it and every one of its partitions has a leader: a
    brand-new topic, or one whose broker just restarted, has partitions whose leader is still
    being elected, and a record sent to them is refused (`NotLeaderForPartition`).
    """
    if not topics:
        return {}
    answer = await _metadata(client, list(topics))
    reasons = {t: "does not exist" for t in topics}
    for t in answer["topics"]:
        if t["topic"] not in reasons:
            continue
        if t["error_code"] != 0:
            continue  # unknown, or being created: "does not exist" stands
        leaderless = sorted(
            p["partition"] for p in t["partitions"] if p["error_code"] != 0 or p["leader"] < 0
        )
        if not t["partitions"]:
            reasons[t["topic"]] = "has no partitions yet"
        elif leaderless:
            reasons[t["topic"]] = f"partitions {leaderless} have no leader"
        else:
            del reasons[t["topic"]]
    return reasons


async def track_existing(client: AIOKafkaClient, topics: Sequence[str]) -> list[str]:
    """Narrow `client`'s metadata to those of `topics` that exist, and refresh it.

    A client tracking no topic would fetch them all; with none of `topics` existing yet, the
    client is left as it is and nothing is tracked.
    """
    found = await existing(client, topics)
    if found:
        # One refresh: set_topics starts it when the set grew; otherwise force starts it, and
        # when it is already under way force returns that same refresh.
        narrowed = client.set_topics(found)
        await client.force_metadata_update()
        await narrowed
    return found
