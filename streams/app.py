"""The Faust app: configuration from Settings, the composition root's clients, the web routes.

`create_app` builds an app without touching the network; clients connect when the worker starts.
`app` is the process's instance, which agents and CLI commands attach to.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import faust
from mode import ServiceT

from streams.logs import logging_config, reset_root_level
from streams.resources import Resources
from streams.settings import Settings, get_settings
from web import server
from web.checks import dependency_checks
from web.middleware import MIDDLEWARES

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

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        # Started with the producer and consumer, stopped with them.
        return [*super().on_init_dependencies(), self.resources]

    def on_webserver_init(self, web: Any) -> None:
        checks = dependency_checks(self.resources, self.settings, lambda: self.tables.actives_ready)
        server.install(web.web_app, checks, VERSION)

    async def on_started(self) -> None:
        await super().on_started()
        reset_root_level(self.settings.log_level)


def faust_options(settings: Settings) -> dict[str, Any]:
    """Faust settings derived from ours. Timeouts are in seconds."""
    return {
        "broker": settings.kafka_broker_urls,
        "version": 1,
        "autodiscover": False,
        "datadir": str(settings.worker_data_dir),
        "store": "memory://",
        "topic_partitions": settings.topic_partitions,
        "topic_replication_factor": settings.topic_replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": settings.kafka_session_timeout_s,
        "broker_heartbeat_interval": settings.kafka_heartbeat_interval_s,
        "broker_rebalance_timeout": settings.kafka_rebalance_timeout_s,
        "broker_request_timeout": settings.kafka_request_timeout_s,
        "broker_commit_interval": settings.kafka_commit_interval_s,
        "web_enabled": True,
        "web_bind": settings.web_bind,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "canonical_url": settings.canonical_url,
        "web_application_options": {"middlewares": list(MIDDLEWARES)},
        "logging_config": logging_config(settings.log_level),
    }


def create_app(settings: Settings) -> AtlasApp:
    return AtlasApp(settings, **faust_options(settings))


app = create_app(get_settings())
