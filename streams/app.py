"""The Faust app: configuration from Settings, the composition root's clients, the web routes.

`create_app` builds an app without touching the network; clients connect when the worker starts.
`app` is the process's instance, which agents and CLI commands attach to.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, cast

import aiohttp.web
import faust
from faust.types import TP
from mode import ServiceT

from streams import kafka
from streams.agents import install_agents
from streams.backlog import OutboxBacklog
from streams.census import AccountCensus
from streams.lag import LagMonitor
from streams.ledger import LedgerProcessor
from streams.logs import logging_config, reset_root_level
from streams.loop_lag import LoopLagProbe
from streams.membership import Membership
from streams.relay import OutboxRelay
from streams.resources import Resources
from streams.settings import Settings, get_settings
from streams.topics import TopicDeclarer, define_topics
from streams.tracing import setup_tracing
from streams.transfers import TransfersProcessor
from tables.errors import DependencyUnavailable
from tables.ledger import Limits
from tables.messages import Position
from tables.store import LedgerTable, define_tables
from web import server
from web.auth import CLIENT, ClientStore, auth_middleware
from web.checks import dependency_checks
from web.docs import install_docs
from web.middleware import edge_middleware
from web.ops import install_lag
from web.ops_page import install_ops_page
from web.ratelimit import Rate, RateLimiter, rate_limit_middleware
from web.reads import TableReads, outbox_pending_transfers
from web.tracing import tracing_middleware
from web.writes import WriteViews

try:
    VERSION = version("atlas-ledger")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0.0.0"


class AtlasApp(faust.App):
    """A Faust app that owns the service's clients and serves Atlas's routes."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.settings = settings
        super().__init__(settings.app_name, **options)
        self.resources = Resources(settings, beacon=self.beacon)
        self.relay = OutboxRelay(
            settings,
            batch=settings.relay_batch,
            poll_s=settings.relay_poll_s,
            publish_timeout_s=settings.relay_publish_timeout_s,
            reap_every_s=settings.relay_reap_every_s,
            published_retention_s=settings.outbox_retention_s,
            retry_max_s=settings.relay_retry_max_s,
            breakers=self.resources.breakers,
            beacon=self.beacon,
        )
        self.backlog = OutboxBacklog(settings, self.resources, beacon=self.beacon)
        self.lag_monitor = LagMonitor(settings, beacon=self.beacon)
        self.limiter = RateLimiter(
            lambda: self.resources.redis,
            Rate(settings.rate_limit_per_s, settings.rate_limit_burst),
            timeout_s=settings.redis_timeout_s,
            breakers=self.resources.breakers,
            lease_s=settings.rate_limit_lease_s,
        )
        self.clients = ClientStore(
            lambda: self.resources.pg,
            timeout_s=settings.postgres_timeout_s,
            breakers=self.resources.breakers,
        )
        partitions = settings.topic_partitions
        self.topics_ = define_topics(self, settings.topic_prefix, partitions)
        self.ledger_tables = define_tables(self, partitions)
        limits = Limits(
            max_amount=settings.max_amount,
            window=settings.dedup_window,
            archive_horizon_s=settings.dedup_horizon_s,
        )
        self.ledger = LedgerProcessor(
            self.ledger_tables, self.topics_, limits, partitions, self.is_committed
        )
        self.transfers = TransfersProcessor(self.ledger_tables)
        self.census = AccountCensus(
            lambda: self.ledger_tables.accounts.values(),
            lambda: self.tables.actives_ready and not self.rebalancing,
            settings.census_interval_s,
            beacon=self.beacon,
        )
        self.membership = Membership(
            self._group_coordinator,
            lambda: self.consumer_generation_id,
            settings.kafka_session_timeout_s,
        )
        install_agents(self, settings, self.topics_, self.ledger, self.transfers, self.membership)

    def _group_coordinator(self) -> Any:
        """aiokafka's group coordinator under Faust's consumer thread, once it exists."""
        thread = getattr(self.consumer, "_thread", None)
        return getattr(getattr(thread, "_consumer", None), "_coordinator", None)

    def input_groups(self) -> list[tuple[str, ...]]:
        """The co-partitioned inputs the consumer batches and time-orders (streams.batches)."""
        return self.topics_.input_groups()

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        # Recovery may rewrite the tables under the ledger's cache of decoded records.
        self.ledger.forget()

    def is_committed(self, position: Position) -> bool:
        """Whether the group's committed offset has moved past `position`."""
        committed: dict[TP, int] = getattr(self.consumer, "committed", {})
        return position.offset < committed.get(TP(position.topic, position.partition), -1)

    def kafka_topic_names(self) -> list[str]:
        """Every topic this worker reads or writes: inputs, outputs, dead letters, changelogs."""
        names = {name for topic in self.topics_.all() for name in topic.topics}
        names.update(table.changelog_topic.get_topic_name() for table in self.tables.values())
        return sorted(names)

    async def kafka_topics_ready(self) -> int:
        """How many topics the worker uses, once each can take records and be routed to.

        Raises while one does not exist, has a partition without a leader, or is missing from
        the metadata of the producer that table routing hashes keys with (whose refresh this
        starts): readiness waits for all three.
        """
        names = self.kafka_topic_names()
        reasons = await self.resources.breakers.call(
            "kafka", lambda: self.resources.kafka_unready(names)
        )
        if reasons:
            raise DependencyUnavailable(
                "; ".join(f"{topic} {why}" for topic, why in sorted(reasons.items()))
            )
        untracked = cast(kafka.SafeProducer, self.producer).untracked(names)
        if untracked:
            raise DependencyUnavailable(f"not in the producer's metadata yet: {untracked}")
        return len(names)

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        # Started in this order with the producer and consumer, stopped in reverse.
        faust_services = list(super().on_init_dependencies())
        # The topics are created right after the producer starts, before the consumer joins
        # its group: a first assignment made while a topic was missing leaves it out until a
        # later rebalance (on a brand-new cluster, seconds after the worker said it was ready).
        after_producer = faust_services.index(self.producer) + 1
        faust_services.insert(after_producer, TopicDeclarer(self.topics_, beacon=self.beacon))
        return [
            *faust_services,
            self.resources,
            self.backlog,
            self.lag_monitor,
            self.census,
            LoopLagProbe(beacon=self.beacon),
            self.relay,  # last: it stops first
        ]

    def on_webserver_init(self, web: Any) -> None:
        # Faust may initialise its web server more than once (start, and again for the
        # server thread); middlewares and routes must be installed once.
        if web.web_app.get(_INSTALLED):
            return
        web.web_app[_INSTALLED] = True
        checks = dependency_checks(
            self.resources,
            self.settings,
            lambda: self.tables.actives_ready,
            self.backlog,
            lag=self.lag_monitor,
            kafka_topics=self.kafka_topics_ready,
        )
        # Inside the edge (see faust_options): refusals are still correlated, counted and
        # rendered as problems, and the deadline bounds auth, the limiter and the view; the
        # limiter needs auth's client.
        web.web_app.middlewares.insert(0, tracing_middleware())  # outermost: spans every log line
        web.web_app.middlewares.append(auth_middleware(self.clients.lookup))
        web.web_app.middlewares.append(rate_limit_middleware(self.limiter, _client_key))
        server.install(web.web_app, checks, VERSION)
        pending = outbox_pending_transfers(
            lambda: self.resources.pg, self.resources.breakers, self.settings.postgres_timeout_s
        )
        TableReads(self, pending).install(web.web_app.router)
        WriteViews(
            self.settings,
            lambda: self.resources.pg,
            _client_id,
            breakers=self.resources.breakers,
            shedding=lambda: self.backlog.over_limit,
        ).install(web.web_app.router)
        install_docs(web.web_app.router, VERSION)
        install_lag(web.web_app.router, self.lag_monitor)
        install_ops_page(web.web_app.router, self)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        setup_tracing(self.settings)  # before the relay, the agents and the web server start

    async def on_started(self) -> None:
        await super().on_started()
        reset_root_level(self.settings.log_level)
        tune_gc(self.settings.gc_threshold)


def tune_gc(threshold: int) -> None:
    """Fewer, cheaper garbage collections once the worker is up (0 keeps Python's defaults).

    Everything alive at start-up (modules, the app, its services) is moved out of the
    collector's sight (`gc.freeze`), and the youngest generation is collected every
    `threshold` allocations instead of 700. Measured with make bench-http: full collections
    of a worker's heap were the 100-200 ms pauses behind its p99.
    """
    if threshold <= 0:
        return
    gc.freeze()
    gc.set_threshold(threshold, 50, 100)


_INSTALLED = aiohttp.web.AppKey("atlas_installed", bool)


def _client_key(request: aiohttp.web.Request) -> str | None:
    client = request.get(CLIENT)
    return str(client.id) if client is not None else None


def _client_id(request: aiohttp.web.Request) -> uuid.UUID | None:
    client = request.get(CLIENT)
    return client.id if client is not None else None


def faust_options(settings: Settings) -> dict[str, Any]:
    """Faust settings derived from ours. Timeouts are in seconds."""
    return {
        "broker": settings.kafka_broker_urls,
        "version": 1,
        "autodiscover": False,
        "datadir": str(settings.worker_data_dir),
        "store": settings.table_store,
        "Table": LedgerTable,  # replays partitions not held without a break (tables.store)
        "table_standby_replicas": 0,
        "producer_linger": settings.producer_linger_s,
        # A batch's outputs and changelog records go to aiokafka in bulk, and aiokafka queues
        # one open batch per partition: with Kafka's 16 KiB default a batch's sends wait on
        # each other's drain. A record batch stays under the broker's 1 MiB message limit.
        "producer_max_batch_size": 512 * 1024,
        # aiokafka bounds a record's whole delivery (its batch's life) by its request timeout.
        "producer_request_timeout": settings.kafka_delivery_timeout_s,
        "stream_wait_empty": True,
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.kafka_session_timeout_s,
        "broker_heartbeat_interval": settings.kafka_heartbeat_interval_s,
        "broker_rebalance_timeout": settings.kafka_rebalance_timeout_s,
        "broker_request_timeout": settings.kafka_request_timeout_s,
        "broker_commit_interval": settings.kafka_commit_interval_s,
        # Counted in batches (`SafeConsumer._ack_batch`), so commits come from the interval, in
        # Faust's commit task. A commit waits for Kafka to acknowledge every record sent
        # before it; one that Faust's fetch loop starts by count (every `broker_commit_every`
        # acks) holds back the next batches' delivery for that long.
        "broker_commit_every": 10_000,
        "consumer_metadata_max_age_ms": int(settings.kafka_metadata_max_age_s * 1000),
        "web_enabled": True,
        "web_bind": settings.web_bind,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "canonical_url": settings.canonical_url,
        "web_application_options": {
            "middlewares": [edge_middleware(settings.request_deadline_s)],
            "client_max_size": settings.max_body_bytes,  # larger bodies get 413
        },
        "logging_config": logging_config(settings.log_level),
    }


def create_app(settings: Settings) -> AtlasApp:
    kafka.register()
    return AtlasApp(settings, **faust_options(settings))


app = create_app(get_settings())
