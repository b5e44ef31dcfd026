"""Metadata asked for only what is needed, on the real broker (which auto-creates topics)."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient

from streams.kafka_metadata import brokers, existing, track_existing
from tests.integration.stack import Stack, tag

pytestmark = pytest.mark.integration


async def test_a_client_tracks_only_the_existing_topics_asked_for(stack: Stack) -> None:
    present, absent = f"md-{tag()}", f"md-absent-{tag()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    client = AIOKafkaClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    await client.bootstrap()
    try:
        await admin.create_topics([NewTopic(present, num_partitions=3, replication_factor=1)])
        assert await brokers(client) >= 1
        assert await existing(client, [present, absent]) == [present]
        assert await track_existing(client, [present, absent]) == [present]
        assert client._topics == {present}  # its refreshes ask for this topic only
        assert client.cluster.partitions_for_topic(present) == {0, 1, 2}
        await client.force_metadata_update()
        assert client.cluster.topics() == {present}  # not the cluster's other topics
        assert absent not in await admin.list_topics()  # asking created nothing
    finally:
        await admin.delete_topics([present])
        await client.close()
        await admin.close()
