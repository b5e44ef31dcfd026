"""Kafka topics the tests and benchmarks make, and their removal afterwards."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient


async def delete_topics_containing(bootstrap: str, token: str) -> list[str]:
    """Delete every topic whose name holds this run's unique token (and only those)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if token in t)
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()
