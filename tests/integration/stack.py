"""Where the integration tier finds Kafka, PostgreSQL and Redis.

With a reachable Docker engine the services are throwaway testcontainers; otherwise they are the
local stack that `make dev-up` started (infra/stack.sh), found through the same settings the
service reads. Either way the tests talk to real servers.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from streams.settings import Settings

SESSION = uuid.uuid4().hex[:6]
"""In the name of every topic, consumer group and app a test session makes: at its end, the
session deletes the topics whose names hold it (a developer's broker does not fill up)."""


def tag() -> str:
    """A fresh name part for one test's topics and groups, with the session's token in it."""
    return SESSION + uuid.uuid4().hex[:4]


@dataclass(frozen=True)
class Stack:
    kafka_bootstrap: str
    database_url: str
    redis_url: str
    source: str


def docker_engine_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


@contextlib.contextmanager
def local_stack() -> Iterator[Stack]:
    s = Settings()
    stack = Stack(
        kafka_bootstrap=s.kafka_bootstrap_servers,
        database_url=s.database_url.get_secret_value(),
        redis_url=s.redis_url.get_secret_value(),
        source="local",
    )
    endpoints = {
        "Kafka": _host_port(stack.kafka_bootstrap.split(",")[0], 9092),
        "PostgreSQL": _host_port(stack.database_url, 5432),
        "Redis": _host_port(stack.redis_url, 6379),
    }
    down = [f"{name} at {h}:{p}" for name, (h, p) in endpoints.items() if not reachable(h, p)]
    if down:
        raise RuntimeError(f"local stack not answering ({', '.join(down)}): run `make dev-up`")
    yield stack


@contextlib.contextmanager
def container_stack() -> Iterator[Stack]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    with (
        KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka,
        PostgresContainer("postgres:15", username="atlas", password="atlas", dbname="atlas") as pg,
        RedisContainer("redis:7") as redis,
    ):
        yield Stack(
            kafka_bootstrap=kafka.get_bootstrap_server(),
            database_url=pg.get_connection_url(driver=None),
            redis_url=f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0",
            source="testcontainers",
        )


def services() -> contextlib.AbstractContextManager[Stack]:
    return container_stack() if docker_engine_available() else local_stack()
